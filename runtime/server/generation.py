"""A request's generations on the engine, bridged to asyncio and answered over HTTP.

:class:`Generation` submits a request's choices (one :class:`runtime.batching.EngineRequest`
each) and yields their events on the event loop (the engine calls back from its thread;
``loop.call_soon_threadsafe`` hands each event over), keeping each choice's text, token count
and logprobs, and the metrics' time to first token and inter-token latency. :func:`stream`
answers with server-sent events and :func:`complete` waits for a whole answer; both cancel the
choices when the client goes away, so their rows leave the batch at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import StreamingResponse

from runtime.batching import Engine, EngineError, EngineEvent, EngineRequest, QueueFull, Ticket
from runtime.results import TokenLogprob
from runtime.server.metrics import Metrics
from runtime.server.protocol import ApiError

# The engine's finish reasons in OpenAI's words.
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass
class Choice:
    """One choice's progress: its text, tokens and logprobs so far, its finish reason."""

    index: int
    prompt: int  # which prompt it continues
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    last: float | None = None  # when its last token came (perf_counter)


class Generation:
    """A request's engine tickets (one per choice) and their events, bridged to asyncio."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        requests: list[tuple[int, EngineRequest]],
        arrived: float,
    ):
        self.metrics = metrics
        self.arrived = arrived
        self.choices = [Choice(index, prompt) for index, (prompt, _) in enumerate(requests)]
        self.queue: asyncio.Queue[tuple[int, EngineEvent, float]] = asyncio.Queue()
        self.tickets: list[Ticket] = []
        loop = asyncio.get_running_loop()
        try:
            for index, (_, engine_request) in enumerate(requests):
                self.tickets.append(engine.submit(engine_request, self._bridge(loop, index)))
        except QueueFull as err:
            self.cancel()
            seconds = str(max(1, int(np.ceil(err.retry_after))))
            raise ApiError(
                f"the server is busy: {err}",
                status=429,
                type="rate_limit_exceeded",
                code="queue_full",
                headers={"Retry-After": seconds},
            ) from None
        except EngineError as err:
            self.cancel()
            raise ApiError(
                str(err), status=503, type="server_error", code="shutting_down"
            ) from None

    def _bridge(self, loop: asyncio.AbstractEventLoop, index: int) -> Callable[[EngineEvent], None]:
        queue = self.queue

        def on_event(event: EngineEvent) -> None:  # the engine's thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(queue.put_nowait, (index, event, time.perf_counter()))

        return on_event

    def cancel(self) -> None:
        for ticket in self.tickets:
            if not ticket.done.is_set():
                ticket.cancel()

    async def events(self) -> AsyncIterator[tuple[Choice, EngineEvent]]:
        """Each event with its choice (updated), as they come, until every choice finished.
        Raises :class:`ApiError` (500) when the engine failed a choice."""
        metrics = self.metrics
        left = len(self.tickets)
        while left:
            index, event, when = await self.queue.get()
            choice = self.choices[index]
            if event.token is not None:
                if choice.last is None:
                    metrics.time_to_first_token.observe(when - self.arrived)
                else:
                    metrics.inter_token_latency.observe(when - choice.last)
                choice.last = when
                choice.tokens += 1
                metrics.completion_tokens.inc()
                if event.logprob is not None:
                    choice.logprobs.append(event.logprob)
            choice.text.append(event.text)
            if event.finish_reason is not None:
                left -= 1
                if event.finish_reason == "error":
                    self.cancel()
                    raise ApiError(
                        f"generation failed: {event.error}",
                        status=500,
                        type="server_error",
                        code="generation_failed",
                    )
                choice.finish_reason = FINISH.get(event.finish_reason, event.finish_reason)
            yield choice, event
        metrics.request_duration.observe(time.perf_counter() - self.arrived)

    def completion_tokens(self) -> int:
        return sum(choice.tokens for choice in self.choices)


@dataclass
class Prepared:
    """A generation request made ready: its prompts' ids and the engine requests."""

    prompts: list[list[int]]
    requests: list[tuple[int, EngineRequest]]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)


async def complete(generation: Generation, request: Request) -> bool:
    """Wait for every choice of a non-streaming request; returns whether they finished. A
    client that goes away meanwhile cancels the request (its rows leave the batch at the
    engine's next step): False. Raises :class:`ApiError` when the engine failed a choice."""

    async def consume() -> None:
        async for _ in generation.events():
            pass

    async def disconnected() -> None:
        # the body is read: what the server receives next is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(consume()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            generation.cancel()
            generation.metrics.cancelled.inc()
    if not work.done() or work.cancelled():
        return False
    work.result()  # the engine's failure, if any
    return True


def stream(generation: Generation, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events of ``chunks``, then ``[DONE]``. A client that goes away cancels the
    generation: Starlette cancels this generator when the connection closes, and ``finally``
    cancels the tickets, whose rows leave the batch at the engine's next step."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except ApiError as err:  # the stream has begun: the error is its last event
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            unfinished = [t for t in generation.tickets if not t.done.is_set()]
            if unfinished:
                generation.metrics.cancelled.inc()
            generation.cancel()
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
