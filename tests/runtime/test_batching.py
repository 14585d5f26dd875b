"""Continuous batching (runtime.batching): requests share steps and still get their own tokens.

The reference for every request is ``model.generate`` of its prompt alone: a row that joins a
running batch (left padded to the batch's width), or that the batch shrinks around when others
leave, must get exactly those tokens, texts and finish reasons, greedy or seeded sampling, for
a decoder-only model and for both encoder-decoder families (T5's relative positions, BART's
learned ones, which need each row's own position ids).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import runtime
from runtime.batching import Engine, EngineError, EngineEvent, EngineRequest, QueueFull
from runtime.errors import RuntimeInputError
from runtime.logits import log_softmax
from runtime.sampling import SamplerChain

PROMPTS = [
    "hello world",
    "a",
    "the quick brown fox jumps over the lazy dog",
    "xyz",
    "once upon a time there was",
    "ab",
]
FAMILIES = ["tiny-gpt", "tiny-t5", "tiny-bart"]
TIMEOUT = 60  # seconds a test waits for the engine at most


@pytest.fixture(scope="module")
def models(varied_artifact):
    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = runtime.load(varied_artifact(name), device="cpu")
        return loaded[name]

    return get


def _collect(ticket) -> list[EngineEvent]:
    return list(ticket)


def _staggered(engine: Engine, chain: str, seeds: bool) -> list[tuple[str, int, int | None, list]]:
    """Submit the first prompt, and the others from its event callback while it runs (so they
    join a running batch), each with its own budget; returns each request's events."""
    sampler = SamplerChain(chain)
    results: list[tuple[str, int, int | None, list]] = []
    done = threading.Event()
    pending = [len(PROMPTS)]
    lock = threading.Lock()

    def make_callback(events: list):
        def on_event(event: EngineEvent) -> None:
            events.append(event)
            if len(events) == 2 and events is results[0][3]:
                for index, prompt in enumerate(PROMPTS[1:], start=1):
                    submit(index, prompt)
            if event.finish_reason is not None:
                with lock:
                    pending[0] -= 1
                    if pending[0] == 0:
                        done.set()

        return on_event

    def submit(index: int, prompt: str) -> None:
        budget = 6 + 3 * index
        seed = 11 + index if seeds else None
        events: list = []
        results.append((prompt, budget, seed, events))
        engine.submit(
            EngineRequest(engine.encode(prompt), budget, sampler, seed=seed),
            on_event=make_callback(events),
        )

    submit(0, PROMPTS[0] + " " + PROMPTS[2])
    assert done.wait(TIMEOUT)
    return results


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    ("chain", "seeds"), [("greedy", False), ("temperature=0.9,top_k=20,sample", True)]
)
def test_rows_joining_a_running_batch_get_the_tokens_they_get_alone(models, name, chain, seeds):
    model = models(name)
    engine = Engine(model, max_batch=4, prefill_chunk_tokens=8)
    try:
        results = _staggered(engine, chain, seeds)
        stats = engine.stats
    finally:
        engine.close()
    total = 0
    for prompt, budget, seed, events in results:
        reference = model.generate(prompt, max_new_tokens=budget, chain=chain, seed=seed)
        assert [e.token for e in events] == reference.tokens[0], prompt
        assert "".join(e.text for e in events) == reference.texts[0]
        assert events[-1].finish_reason == reference.finish_reasons[0]
        assert all(e.finish_reason is None for e in events[:-1])
        total += len(events)
    # the requests shared steps: fewer decode steps than tokens
    assert stats.tokens == total
    assert stats.steps < total - len(results)


def test_every_row_of_a_full_batch_matches_generate_alone_with_stop_strings(models):
    model = models("tiny-gpt")
    chain = SamplerChain("greedy")
    references = [model.generate(p, max_new_tokens=16, chain="greedy") for p in PROMPTS]
    # a stop string that each row's text reaches: its own third character onwards
    stops = [(r.texts[0][2:4],) if len(r.texts[0]) > 4 else () for r in references]
    with Engine(model, max_batch=len(PROMPTS)) as engine:
        tickets = [
            engine.submit(EngineRequest(engine.encode(p), 16, chain, stop=s))
            for p, s in zip(PROMPTS, stops, strict=True)
        ]
        events = [_collect(t) for t in tickets]
    for prompt, stop, got in zip(PROMPTS, stops, events, strict=True):
        reference = model.generate(prompt, max_new_tokens=16, chain="greedy", stop=stop or None)
        assert "".join(e.text for e in got) == reference.texts[0]
        assert got[-1].finish_reason == reference.finish_reasons[0]
        assert [e.token for e in got] == reference.tokens[0]
        for text in stop:
            assert text not in "".join(e.text for e in got)


def test_a_cancelled_request_leaves_the_batch_and_the_others_are_unaffected(models):
    model = models("tiny-gpt")
    chain = SamplerChain("greedy")
    seen = threading.Event()

    def on_event(event: EngineEvent) -> None:
        if event.token is not None:
            seen.set()

    with Engine(model, max_batch=4) as engine:
        budget = model.context_length - len(engine.encode(PROMPTS[0]))
        long = engine.submit(EngineRequest(engine.encode(PROMPTS[0]), budget, chain), on_event)
        other = engine.submit(EngineRequest(engine.encode(PROMPTS[2]), 20, chain))
        assert seen.wait(TIMEOUT)
        long.cancel()
        assert long.done.wait(TIMEOUT)
        events = _collect(other)
        deadline = time.monotonic() + TIMEOUT
        while engine.stats.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.running == 0
    reference = model.generate(PROMPTS[2], max_new_tokens=20, chain="greedy")
    assert [e.token for e in events] == reference.tokens[0]


def test_a_cancelled_ticket_ends_with_cancelled_and_frees_its_row(models):
    model = models("tiny-gpt")
    events: list[EngineEvent] = []
    first = threading.Event()

    def on_event(event: EngineEvent) -> None:
        events.append(event)
        first.set()

    with Engine(model, max_batch=1) as engine:
        budget = model.context_length - len(engine.encode("a"))
        ticket = engine.submit(
            EngineRequest(engine.encode("a"), budget, SamplerChain("greedy")), on_event
        )
        assert first.wait(TIMEOUT)
        ticket.cancel()
        assert ticket.done.wait(TIMEOUT)
        # the row is free: a new request gets it and finishes
        after = _collect(
            engine.submit(EngineRequest(engine.encode("b"), 3, SamplerChain("greedy")))
        )
    assert events[-1].finish_reason == "cancelled"
    assert len(events) < budget
    assert after[-1].finish_reason in ("length", "eos")


def test_a_full_queue_refuses_with_a_retry_after(models):
    model = models("tiny-gpt")
    chain = SamplerChain("greedy")
    with Engine(model, max_batch=1, max_queue=1) as engine:
        ids = engine.encode("a")
        budget = model.context_length - len(ids)
        accepted, refused = [], []
        for _ in range(4):
            try:
                accepted.append(engine.submit(EngineRequest(ids, budget, chain)))
            except QueueFull as err:
                refused.append(err)
        for ticket in accepted:
            ticket.cancel()
    # one row runs and one request waits at most: the rest are refused
    assert 1 <= len(accepted) <= 2
    assert len(refused) == 4 - len(accepted)
    assert all(err.retry_after >= 1 for err in refused)
    assert "max_queue 1" in str(refused[0])


def test_close_finishes_accepted_requests_then_refuses_new_ones(models):
    model = models("tiny-gpt")
    chain = SamplerChain("greedy")
    engine = Engine(model, max_batch=2)
    tickets = [engine.submit(EngineRequest(engine.encode(p), 5, chain)) for p in PROMPTS]
    assert engine.close(drain=True, timeout=TIMEOUT)
    for ticket in tickets:
        assert ticket.done.is_set()
        assert _collect(ticket)[-1].finish_reason in ("length", "eos")
    with pytest.raises(EngineError, match="shutting down"):
        engine.submit(EngineRequest(engine.encode("a"), 1, chain))


def test_logprobs_are_the_models_log_softmax_and_top_is_sorted(models):
    model = models("tiny-gpt")
    ids = model.encode("hello")
    with Engine(model) as engine:
        events = _collect(engine.submit(EngineRequest(ids, 4, SamplerChain("greedy"), logprobs=3)))
    # the first token's logprob, recomputed from the decoder graph's prefill logits
    logits, _ = model.feeder.run(np.array([ids]), np.ones((1, len(ids)), np.int64))
    expected = log_softmax(logits[0, -1])
    first = events[0].logprob
    assert first is not None and first.token == events[0].token
    assert first.logprob == pytest.approx(expected[first.token], abs=1e-5)
    for event in events:
        assert event.logprob is not None
        values = [value for _, value in event.logprob.top]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert event.logprob.top[0][0] == event.token  # greedy picks the most likely
        assert sum(np.exp(values)) <= 1 + 1e-6


def test_bad_requests_are_refused_before_they_queue(models):
    model = models("tiny-gpt")
    chain = SamplerChain("greedy")
    with Engine(model) as engine:
        ids = engine.encode("a")
        with pytest.raises(RuntimeInputError, match="context window"):
            engine.submit(EngineRequest(ids, model.context_length, chain))
        with pytest.raises(RuntimeInputError, match="logprobs"):
            engine.submit(EngineRequest(ids, 1, chain, logprobs=21))
        with pytest.raises(RuntimeInputError, match="outside the vocabulary|vocab"):
            engine.submit(EngineRequest([model.vocab_size], 1, chain))
        with pytest.raises(RuntimeInputError, match="SamplerChain"):
            engine.submit(EngineRequest(ids, 1, "greedy"))  # type: ignore[arg-type]
        zero = _collect(engine.submit(EngineRequest(ids, 0, chain)))
        assert engine.stats.queued == 0
    assert zero == [EngineEvent(None, "", "length")]


def test_an_encoder_only_model_is_refused_by_name(tiny_artifact):
    model = runtime.load(tiny_artifact("tiny-encoder"), device="cpu")
    with pytest.raises(RuntimeInputError, match="encoder-only|not one"):
        Engine(model)


def test_a_max_batch_whose_caches_cannot_fit_memory_is_refused(models):
    with pytest.raises(RuntimeInputError, match="max_batch 1000000000 needs up to .* GiB"):
        Engine(models("tiny-gpt"), max_batch=10**9)


def test_a_consumer_whose_callback_fails_is_cancelled_and_the_others_go_on(models):
    model = models("tiny-gpt")
    chain = SamplerChain("greedy")

    def broken(event: EngineEvent) -> None:
        raise ConnectionError("the client went away")

    with Engine(model, max_batch=4) as engine:
        budget = model.context_length - len(engine.encode(PROMPTS[0]))
        gone = engine.submit(EngineRequest(engine.encode(PROMPTS[0]), budget, chain), broken)
        other = _collect(engine.submit(EngineRequest(engine.encode(PROMPTS[2]), 12, chain)))
        assert gone.done.wait(TIMEOUT)
    assert gone.cancelled
    reference = model.generate(PROMPTS[2], max_new_tokens=12, chain="greedy")
    assert [e.token for e in other] == reference.tokens[0]
