"""Generation on ONNX Runtime: the same tokens as PyTorch, batches, streams, stops, threads."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import llmspec
import runtime
from runtime import artifact as fmt
from runtime import steppers
from runtime.sampling import SamplerChain
from runtime.session import Graph

PROMPTS = ["Hello world", "Hi", "The quick brown fox jumps"]


@pytest.fixture(scope="module")
def gpt(varied_artifact):
    return runtime.load(varied_artifact("tiny-gpt"), device="cpu")


@pytest.fixture(scope="module")
def t5(varied_artifact):
    return runtime.load(varied_artifact("tiny-t5"), device="cpu")


def _torch_model(path):
    return llmspec.build(path / fmt.SPEC, dtype="fp32", weights=path / fmt.WEIGHTS).eval()


@torch.no_grad()
def _torch_greedy_decoder(model, prompt, steps):
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    out = model(ids, mask, torch.arange(len(prompt))[None], None)
    tokens = []
    for _ in range(steps):
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        position = torch.tensor([[mask.shape[1]]])
        mask = torch.ones(1, mask.shape[1] + 1, dtype=torch.long)
        out = model(torch.tensor([[token]]), mask, position, list(out.present))
    return tokens


@torch.no_grad()
def _torch_greedy_seq2seq(model, source, start, steps):
    src = torch.tensor([source])
    src_mask = torch.ones_like(src)
    cross = list(model.encode(src, src_mask).cross_key_values)
    token, past, tokens = start, None, []
    for step in range(steps):
        mask = torch.ones(1, step + 1, dtype=torch.long)
        out = model.decode(
            torch.tensor([[token]]), src_mask, cross, mask, torch.tensor([[step]]), past
        )
        past = list(out.present)
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
    return tokens


def test_decoder_greedy_tokens_equal_pytorch_for_64_steps(gpt):
    reference = _torch_model(gpt.path)
    for prompt in PROMPTS[:2]:
        ids = gpt.encode(prompt)
        result = gpt.generate(prompt, max_new_tokens=64, chain="greedy")
        expected = _torch_greedy_decoder(reference, ids, 64)
        eos = gpt.special_tokens["eos"]
        if eos in expected:  # the runtime stops at eos; PyTorch's loop does not
            expected = expected[: expected.index(eos) + 1]
        assert result.tokens[0] == expected
        assert len(set(expected)) > 8  # varied, not one token repeated


def test_encoder_decoder_greedy_tokens_equal_pytorch_for_64_steps(t5):
    reference = _torch_model(t5.path)
    start = t5.special_tokens["decoder_start"]
    for prompt in PROMPTS[:2]:
        source = t5._prompt_tokens(prompt)
        assert source[-1] == t5.special_tokens["eos"]  # T5 framing: tokens, then eos
        result = t5.generate(prompt, max_new_tokens=64, chain="greedy")
        expected = _torch_greedy_seq2seq(reference, source, start, 64)
        eos = t5.special_tokens["eos"]
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert result.tokens[0] == expected
        assert len(set(expected)) > 4


@torch.no_grad()
def _torch_chain_seq2seq(model, source, start, steps, chain, vocab_size):
    """The PyTorch model's tokens when the runtime's own decoding chain picks them."""
    sampler = SamplerChain(chain)
    state = sampler.start([[start]], vocab_size)
    src = torch.tensor([source])
    src_mask = torch.ones_like(src)
    cross = list(model.encode(src, src_mask).cross_key_values)
    token, past, tokens = start, None, []
    for step in range(steps):
        mask = torch.ones(1, step + 1, dtype=torch.long)
        position = torch.tensor([[step]])
        out = model.decode(torch.tensor([[token]]), src_mask, cross, mask, position, past)
        past = list(out.present)
        token = int(sampler.select(out.logits[:, -1].numpy(), state)[0])
        state.append(np.array([token]))
        tokens.append(token)
    return tokens


def test_bart_tokens_equal_pytorch(varied_artifact):
    """BART's decoder has learned positions, so the runtime feeds it position ids. (Its
    greedy output repeats one token; a repetition penalty makes the comparison telling.)"""
    bart = runtime.load(varied_artifact("tiny-bart"), device="cpu")
    reference = _torch_model(bart.path)
    start = bart.special_tokens["decoder_start"]
    chain = "repetition_penalty=5.0,greedy"
    for prompt in PROMPTS[:2]:
        source = bart._prompt_tokens(prompt)
        assert source[0] == bart.special_tokens["bos"] and source[-1] == bart.special_tokens["eos"]
        result = bart.generate(prompt, max_new_tokens=24, chain=chain)
        expected = _torch_chain_seq2seq(reference, source, start, 24, chain, bart.vocab_size)
        eos = bart.special_tokens["eos"]
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert result.tokens[0] == expected
        assert len(set(expected)) > 4


@pytest.mark.parametrize("family", ["gpt", "t5"])
@pytest.mark.parametrize("chain", ["greedy", "beam_search=3"])
def test_batched_generation_equals_per_row_generation(family, chain, request):
    model = request.getfixturevalue(family)
    batched = model.generate(PROMPTS, max_new_tokens=24, chain=chain)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(prompt, max_new_tokens=24, chain=chain)
        assert batched.tokens[row] == alone.tokens[0]
        assert batched.texts[row] == alone.texts[0]
        assert batched.finish_reasons[row] == alone.finish_reasons[0]


def test_token_id_prompts_are_used_as_given(gpt):
    ids = gpt.encode("Hello world")
    by_text = gpt.generate("Hello world", max_new_tokens=8)
    assert gpt.generate(ids, max_new_tokens=8).tokens == by_text.tokens
    assert gpt.generate([ids, np.asarray(ids)], max_new_tokens=8).tokens == by_text.tokens * 2
    assert by_text.prompt_tokens == [ids]


def test_same_seed_same_tokens_and_another_seed_other_tokens(gpt, t5):
    chain = "temperature=1.5,top_k=50,sample"
    for model in (gpt, t5):
        first = model.generate(PROMPTS, max_new_tokens=16, chain=chain, seed=7)
        again = model.generate(PROMPTS, max_new_tokens=16, chain=chain, seed=7)
        other = model.generate(PROMPTS, max_new_tokens=16, chain=chain, seed=8)
        assert first.tokens == again.tokens
        assert first.tokens != other.tokens


def test_default_chain_and_length_come_from_generation_json(gpt):
    generation = json.loads((gpt.path / fmt.GENERATION).read_text())
    result = gpt.generate("Hi")
    assert gpt.max_new_tokens == generation["max_new_tokens"]
    assert str(gpt.chain) == "greedy"
    assert result.timing.steps == len(result.tokens[0]) == generation["max_new_tokens"]


def test_chain_accepts_its_object_string_steps_and_json(gpt):
    chain = runtime.DecodingChain.parse("temperature=0.8,top_p=0.9,sample")
    expected = gpt.generate(PROMPTS, max_new_tokens=10, chain=chain, seed=3).tokens
    for form in (str(chain), list(chain.steps), chain.to_json()):
        assert gpt.generate(PROMPTS, max_new_tokens=10, chain=form, seed=3).tokens == expected


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_streaming_yields_the_same_tokens_and_text_as_a_plain_call(family, request):
    model = request.getfixturevalue(family)
    options = {"max_new_tokens": 20, "chain": "temperature=0.9,sample", "seed": 5}
    plain = model.generate(PROMPTS, **options)
    stream = model.generate(PROMPTS, stream=True, **options)
    assert isinstance(stream, runtime.GenerationStream)
    tokens = [[] for _ in PROMPTS]
    texts = ["" for _ in PROMPTS]
    reasons = [None for _ in PROMPTS]
    for event in stream:
        assert reasons[event.row] is None  # nothing after a row's last event
        tokens[event.row].append(event.token)
        texts[event.row] += event.text
        reasons[event.row] = event.finish_reason
    assert tokens == plain.tokens
    assert texts == plain.texts == stream.result.texts
    assert reasons == plain.finish_reasons


def test_a_stream_holds_its_result_only_when_exhausted(gpt):
    stream = gpt.generate("Hi", max_new_tokens=3, stream=True)
    with pytest.raises(RuntimeError, match="not exhausted"):
        _ = stream.result
    assert len(list(stream)) == 3
    assert stream.result.timing.steps == 3


def _stop_from_greedy(model, prompt):
    """A stop string that appears in the middle of the greedy text."""
    text = model.generate(prompt, max_new_tokens=24).texts[0]
    for start in range(4, len(text) - 3):
        piece = text[start : start + 2]
        if "\ufffd" not in piece and text.find(piece) == start:
            return text, start, piece
    pytest.skip("no usable stop string in the greedy text")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_row_and_are_trimmed(gpt, stream):
    text, start, stop = _stop_from_greedy(gpt, PROMPTS[0])
    result = gpt.generate(
        PROMPTS[:2], max_new_tokens=24, stop=[stop, "never appears"], stream=stream
    )
    if stream:
        streamed = ["", ""]
        for event in result:
            streamed[event.row] += event.text
        result = result.result
        assert streamed == result.texts  # the stop string never leaked into the stream
    assert result.texts[0] == text[:start]
    assert result.finish_reasons[0] == "stop"
    assert gpt.decode(result.tokens[0]).startswith(text[:start] + stop)
    assert len(result.tokens[0]) < 24
    alone = gpt.generate(PROMPTS[1], max_new_tokens=24, stop=[stop, "never appears"])
    assert result.tokens[1] == alone.tokens[0]


def _with_eos(path, tmp_path, eos):
    """A copy of the artifact whose manifest names another eos token (the manifest is not in
    its own file list, so the copy still verifies)."""
    copy = tmp_path / "eos"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / fmt.MANIFEST).read_text())
    manifest["special_tokens"]["eos"] = eos
    (copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    return copy


def test_eos_finishes_a_row_while_the_others_go_on(gpt, tmp_path):
    greedy = gpt.generate(PROMPTS, max_new_tokens=24)
    eos = greedy.tokens[0][5]
    model = runtime.load(_with_eos(gpt.path, tmp_path, eos), device="cpu")
    result = model.generate(PROMPTS, max_new_tokens=24)
    first = greedy.tokens[0].index(eos)
    assert result.tokens[0] == greedy.tokens[0][: first + 1]
    assert result.finish_reasons[0] == "eos"
    assert eos not in model.encode(result.texts[0]) or eos in model._hidden_ids()
    for row in (1, 2):  # a finished row is masked: the others are unaffected
        alone = model.generate(PROMPTS[row], max_new_tokens=24)
        assert result.tokens[row] == alone.tokens[0]
        assert result.finish_reasons[row] == alone.finish_reasons[0]


def test_max_new_tokens_zero_generates_nothing(gpt):
    result = gpt.generate(PROMPTS, max_new_tokens=0)
    assert result.tokens == [[], [], []] and result.texts == ["", "", ""]
    assert result.finish_reasons == ["length"] * 3


def test_timing_is_reported(gpt):
    timing = gpt.generate(PROMPTS, max_new_tokens=8).timing
    assert timing.steps == 8
    assert timing.prefill_ms > 0 and timing.per_token_ms > 0
    assert timing.total_ms >= timing.prefill_ms
    assert timing.tokens_per_second > 0


def test_the_encoder_runs_once_per_request(t5, monkeypatch):
    runs = []
    original = Graph.run

    def counting(self, inputs, cache, host, buffers=None, **kept):
        runs.append(self.path.name)
        return original(self, inputs, cache, host, buffers, **kept)

    monkeypatch.setattr(Graph, "run", counting)
    t5.generate(PROMPTS, max_new_tokens=10)
    assert runs.count(fmt.ENCODER_GRAPH) == 1
    assert runs.count(fmt.DECODER_GRAPH) == 10


def test_concurrent_calls_give_the_serial_results(gpt, t5):
    jobs = [
        (model, prompts, seed)
        for model in (gpt, t5)
        for prompts, seed in ((PROMPTS, 1), (PROMPTS[1:], 2), (PROMPTS[0], 3), (PROMPTS[::-1], 4))
    ]

    def run(job):
        model, prompts, seed = job
        return model.generate(prompts, max_new_tokens=12, chain="top_k=20,sample", seed=seed).tokens

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, jobs * 2))
    assert concurrent == serial * 2


def test_an_int8_artifact_generates(tiny_artifact):
    model = runtime.load(tiny_artifact("tiny-gpt", "int8"), device="cpu")
    assert model.manifest.quantize == "int8"
    result = model.generate(PROMPTS, max_new_tokens=8)
    for tokens, reason in zip(result.tokens, result.finish_reasons, strict=True):
        assert len(tokens) == 8 or reason == "eos"
    assert all(0 <= token < model.vocab_size for row in result.tokens for token in row)


def test_beam_search_with_one_beam_is_greedy(gpt):
    greedy = gpt.generate(PROMPTS, max_new_tokens=12)
    beam = gpt.generate(PROMPTS, max_new_tokens=12, chain="beam_search=1")
    assert beam.tokens == greedy.tokens


CHAINS = ("greedy", "beam_search=2", "top_k=20,sample")


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_the_iobinding_path_gives_the_plain_path_tokens(family, request, monkeypatch):
    """The CUDA path (IOBinding, the cache kept as OrtValues and fed back, beams reordered
    through the host) exercised with the cache bound to the CPU, since CI has no GPU."""
    model = request.getfixturevalue(family)
    options = {"max_new_tokens": 12}
    expected = {c: model.generate(PROMPTS, chain=c, seed=1, **options) for c in CHAINS}
    for graph in model._graphs.values():
        monkeypatch.setattr(graph, "bind", "cpu")
    for chain in CHAINS:
        bound = model.generate(PROMPTS, chain=chain, seed=1, **options)
        assert bound.tokens == expected[chain].tokens


@pytest.mark.parametrize("chunk_tokens", [1, 4, 7])
def test_a_prompt_prefilled_in_chunks_gives_the_one_run_result(gpt, chunk_tokens, monkeypatch):
    """Chunked prefill (runtime.steppers.PREFILL_CHUNK_TOKENS over the batch) feeds each chunk the
    cache of the ones before it, with left padding spread over several chunks: the first
    logits and every token equal a single prefill's."""
    prompts = [*PROMPTS, "a much longer prompt than the others, to pad them over chunks"]
    chains = ("greedy", "beam_search=2", "top_k=20,sample")
    expected = {c: gpt.generate(prompts, max_new_tokens=10, chain=c, seed=3) for c in chains}
    first: dict[str, np.ndarray] = {}
    real_select = SamplerChain.select

    def record(self, logits, state):
        first.setdefault("logits", logits.copy())
        return real_select(self, logits, state)

    monkeypatch.setattr(steppers, "PREFILL_CHUNK_TOKENS", chunk_tokens * len(prompts))
    monkeypatch.setattr(SamplerChain, "select", record)
    chunked = {c: gpt.generate(prompts, max_new_tokens=10, chain=c, seed=3) for c in chains}
    for chain in chains:
        assert chunked[chain].tokens == expected[chain].tokens
    monkeypatch.setattr(steppers, "PREFILL_CHUNK_TOKENS", 10**9)
    first_chunked = first.pop("logits")
    gpt.generate(prompts, max_new_tokens=1, chain="greedy")
    np.testing.assert_allclose(first_chunked, first["logits"], rtol=1e-5, atol=1e-5)
