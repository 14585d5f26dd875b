"""The OpenAI-compatible HTTP app: Starlette routes over a continuous-batching engine.

:func:`create_app` takes a loaded model (``runtime.load``) and returns an ASGI app (run it with
uvicorn, see :func:`runtime.server.serve`):

* ``GET /v1/models``; ``POST /v1/completions`` and ``POST /v1/chat/completions`` (decoder-only
  and encoder-decoder models, through :class:`runtime.batching.Engine`);
  ``POST /v1/embeddings`` (encoder-only models, :meth:`runtime.model.EncoderModel.embed`, mean
  pooled and L2-normalized as OpenAI's embeddings are); ``GET /health``; ``GET /metrics``.
* Streaming is server-sent events, ``data: {chunk}\\n\\n`` ending with ``data: [DONE]``, in
  OpenAI's chunk shapes; ``stream_options.include_usage`` adds a last chunk with the usage.
* ``usage`` is exact: ``prompt_tokens`` counts the token ids fed to the model (a prompt once
  however many choices ``n`` asks for; the rendered chat template's tokens for a chat), and
  ``completion_tokens`` every generated token of every choice, the stop token included (the
  eos, or the tokens that made a stop string, although their text is cut).
* Errors are OpenAI's shape (:class:`runtime.server.protocol.ApiError`): 400 for a bad request,
  naming the field; 401 for a missing or wrong API key (compared with ``hmac.compare_digest``;
  ``/health`` and ``/metrics`` need none); 404 for another model's name; 429 with Retry-After
  when the engine's queue is full; 503 while shutting down.
* A streaming client that disconnects cancels its generation: its batch row is freed at the
  engine's next step.
* Logprobs are the model's own (before the chain's processors, see
  :class:`runtime.results.TokenLogprob`), in OpenAI's shapes: completions' ``logprobs: k``
  (tokens, token_logprobs, top_logprobs, text_offset), chat's ``logprobs`` and
  ``top_logprobs`` (content entries with bytes).
* ``response_format`` ``json_schema`` / ``json_object`` (the schema ``{"type": "object"}``)
  constrain decoding with :meth:`runtime.model.GenerativeModel.constraint`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runtime.artifact import ArtifactError
from runtime.batching import Engine, EngineError, EngineEvent, EngineRequest, QueueFull, Ticket
from runtime.decoding import DecodingError
from runtime.errors import RuntimeInputError
from runtime.model import EncoderModel, GenerativeModel, Seq2SeqModel
from runtime.results import TokenLogprob
from runtime.sampling import SamplerChain
from runtime.server.chat import ChatTemplate, no_template
from runtime.server.metrics import CONTENT_TYPE, Metrics
from runtime.server.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from runtime.server.sampling import decoding_chain

_log = logging.getLogger("llmspec.server")
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
CLIENT_GONE = 499  # nginx's "client closed request": the status counted for an abandoned request
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Server:
    """What the routes share: the model, its engine (None for an encoder), the chat template,
    the metrics and the API key."""

    model: Any
    engine: Engine | None
    chat: ChatTemplate | None
    metrics: Metrics
    api_key: str | None
    name: str
    created: int = field(default_factory=lambda: int(time.time()))
    _token_texts: dict[int, str] = field(default_factory=dict)

    def token_text(self, token: int) -> str:
        """A token's own text (as the tokenizer decodes it alone), cached."""
        text = self._token_texts.get(token)
        if text is None:
            text = self.model.tokenizer.decode([token], skip_special_tokens=False)
            self._token_texts[token] = text
        return text


def create_app(
    model: Any, *, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64
) -> Starlette:
    """The ASGI app serving ``model`` (a loaded artifact). A generative model gets an
    :class:`Engine` (``max_batch`` rows, ``max_queue`` waiting requests), started now and
    drained when the app shuts down (in-flight requests finish first). ``api_key``: when given,
    every ``/v1`` request must send ``Authorization: Bearer <api_key>``.

    ``app.state.server`` is the :class:`Server` (``.engine.stats`` for tests and tools).
    Raises :class:`runtime.server.chat.ChatTemplateError` for an artifact whose chat template
    does not compile."""
    engine = None
    chat = None
    if isinstance(model, GenerativeModel):
        if model.chat_template is not None:
            chat = ChatTemplate(
                model.chat_template, _special_text(model, "bos"), _special_text(model, "eos")
            )
        engine = Engine(model, max_batch=max_batch, max_queue=max_queue)

    def queue_depth() -> float:
        return engine.stats.queued if engine is not None else 0

    def running() -> float:
        return engine.stats.running if engine is not None else 0

    server = Server(
        model=model,
        engine=engine,
        chat=chat,
        metrics=Metrics(queue_depth, running),
        api_key=api_key,
        name=model.manifest.name,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if engine is not None:  # uvicorn has waited for the open responses: drain the rest
            await run_in_threadpool(engine.close, True)

    def route(path: str, endpoint: str, handler: Callable[..., Awaitable[Response]], method: str):
        async def call(request: Request) -> Response:
            return await _answer(server, endpoint, request, handler)

        return Route(path, call, methods=[method])

    app = Starlette(
        routes=[
            route("/v1/models", "models", _models, "GET"),
            route("/v1/completions", "completions", _completions, "POST"),
            route("/v1/chat/completions", "chat", _chat, "POST"),
            route("/v1/embeddings", "embeddings", _embeddings, "POST"),
            Route("/health", lambda request: JSONResponse({"status": "ok"}), methods=["GET"]),
            Route(
                "/metrics",
                lambda request: Response(server.metrics.text(), media_type=CONTENT_TYPE),
                methods=["GET"],
            ),
        ],
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def _special_text(model: GenerativeModel, name: str) -> str:
    token = model.special_tokens.get(name)
    if token is None:
        return ""
    return model.tokenizer.id_to_token(token) or ""


async def _http_error(request: Request, err: HTTPException) -> Response:
    """Starlette's 404 and 405 in OpenAI's shape."""
    message = {
        404: f"no route {request.url.path}; the endpoints are /v1/models, /v1/completions, "
        "/v1/chat/completions, /v1/embeddings, /health and /metrics",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(err.status_code, str(err.detail))
    error = ApiError(message, status=err.status_code, code=str(err.status_code))
    return JSONResponse(error.body(), status_code=err.status_code, headers=err.headers)


async def _answer(server: Server, endpoint: str, request: Request, handler: Any) -> Response:
    """Run ``handler`` with the API key checked; any :class:`ApiError` becomes its JSON
    answer, a refusal of the runtime a 400, a failure of ours a 500 (its traceback logged, not
    sent); count the request."""
    arrived = time.perf_counter()
    try:
        _authorize(server, request)
        response = await handler(server, request, arrived)
    except ApiError as err:
        response = _error(err)
    except (RuntimeInputError, DecodingError) as err:
        response = _error(ApiError(str(err), code="invalid_value"))
    except ArtifactError as err:  # the deployment's fault (its tokenizer failed), not the request's
        response = _error(
            ApiError(str(err), status=500, type="server_error", code="artifact_error")
        )
    except Exception:
        _log.exception("%s failed", request.url.path)
        message = "the server failed on this request; its log has the details"
        response = _error(ApiError(message, status=500, type="server_error", code="internal_error"))
    server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
    if not isinstance(response, StreamingResponse):
        server.metrics.request_duration.observe(time.perf_counter() - arrived)
    return response


def _error(err: ApiError) -> Response:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _authorize(server: Server, request: Request) -> None:
    if server.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), server.api_key.encode()
    ):
        what = "no API key was given" if not header else "the API key is not valid"
        raise ApiError(
            f"{what}; send it as the header 'Authorization: Bearer <key>'",
            status=401,
            code="invalid_api_key",
        )


def _check_model(server: Server, name: str | None) -> None:
    if name is not None and name != server.name:
        raise ApiError(
            f"the model {name!r} does not exist here; this server serves {server.name!r}",
            param="model",
            status=404,
            code="model_not_found",
        )


async def _models(server: Server, request: Request, arrived: float) -> Response:
    card = {"id": server.name, "object": "model", "created": server.created, "owned_by": "llmspec"}
    return JSONResponse({"object": "list", "data": [card]})


# ----------------------------------------------------------------------------------------
# Generation


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

    def __init__(self, server: Server, requests: list[tuple[int, EngineRequest]], arrived: float):
        assert server.engine is not None
        self.server = server
        self.arrived = arrived
        self.choices = [Choice(index, prompt) for index, (prompt, _) in enumerate(requests)]
        self.queue: asyncio.Queue[tuple[int, EngineEvent, float]] = asyncio.Queue()
        self.tickets: list[Ticket] = []
        loop = asyncio.get_running_loop()
        try:
            for index, (_, engine_request) in enumerate(requests):
                self.tickets.append(server.engine.submit(engine_request, self._bridge(loop, index)))
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
        metrics = self.server.metrics
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


def _generative(server: Server, what: str) -> Engine:
    if server.engine is None:
        raise ApiError(
            f"the model {server.name!r} is encoder-only: it embeds texts (/v1/embeddings) and "
            f"does not generate {what}",
            status=400,
            code="unsupported_model",
        )
    return server.engine


async def _prepare(
    server: Server,
    body: Any,
    prompts: list[list[int]],
    budget: tuple[int | None, str],
    prompt_field: str,
    top_logprobs: int | None,
) -> Prepared:
    """The engine requests of a completion or chat request: ``n`` per prompt, checked against
    the context window, with the request's chain (and constraint)."""
    engine = server.engine
    model = server.model
    assert engine is not None
    if body.stream_options is not None and not body.stream:
        raise ApiError(
            "stream_options: only allowed with stream: true (it sets what a stream sends)",
            param="stream_options",
            code="invalid_value",
        )
    chain = decoding_chain(body, model.vocab_size)
    constraint = await _constraint(model, body)
    try:
        sampler = SamplerChain(chain, constraint=constraint) if constraint else SamplerChain(chain)
    except DecodingError as err:
        raise ApiError(str(err), code="invalid_value") from None
    requests = []
    limit, limit_field = budget
    for number, ids in enumerate(prompts):
        max_new = limit if limit is not None else _default_budget(model, len(ids))
        try:
            engine.check(ids, max_new)
        except RuntimeInputError as err:
            param = limit_field if limit is not None else prompt_field
            message = str(err).replace("max_new_tokens", limit_field)
            if len(prompts) == 1:
                message = message.replace("prompt 0 ", "the prompt ")
            raise ApiError(
                f"{param}: {message}", param=param, code="context_length_exceeded"
            ) from None
        for copy in range(body.n):
            index = number * body.n + copy
            seed = None if body.seed is None else body.seed + index
            request = EngineRequest(
                prompt=ids,
                max_new_tokens=max_new,
                sampler=sampler,
                seed=seed,
                stop=body.stop_strings,
                logprobs=top_logprobs,
            )
            requests.append((number, request))
    server.metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts))
    return Prepared(prompts, requests)


def _default_budget(model: GenerativeModel, prompt_length: int) -> int:
    """The artifact's max_new_tokens, cut to what the context window leaves (at least 1, so
    that a prompt that fills the window is refused by name)."""
    if isinstance(model, Seq2SeqModel):
        return min(model.max_new_tokens, model.context_length)
    return max(1, min(model.max_new_tokens, model.context_length - prompt_length))


async def _constraint(model: GenerativeModel, body: Any) -> Any:
    form = body.response_format
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        schema: Any = {"type": "object"}
    else:
        schema = form.json_schema.json_schema
        if schema is None:
            schema = {}
    try:
        return await run_in_threadpool(model.constraint, json_schema=schema)
    except RuntimeInputError as err:
        raise ApiError(
            f"response_format: {err}", param="response_format", code="invalid_value"
        ) from None


def _encode(engine: Engine, text: str, special: bool, param: str) -> list[int]:
    try:
        return engine.encode(text, special=special)
    except RuntimeInputError as err:
        raise ApiError(f"{param}: {err}", param=param, code="invalid_value") from None


def _token_ids(server: Server, ids: list[int], param: str) -> list[int]:
    """A prompt given as token ids, each checked against the vocabulary."""
    vocab = server.model.vocab_size
    for position, token in enumerate(ids):
        if token >= vocab:  # the protocol refused negative ones
            raise ApiError(
                f"{param}: token id {token} at position {position} is outside the vocabulary "
                f"[0, {vocab})",
                param=param,
                code="invalid_value",
            )
    return list(ids)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _completions(server: Server, request: Request, arrived: float) -> Response:
    engine = _generative(server, "completions")
    body: CompletionRequest = parse(CompletionRequest, await request.body())
    _check_model(server, body.model)
    prompt: Any = body.prompt
    if isinstance(prompt, str):
        prompts = [_encode(engine, prompt, True, "prompt")]
    elif all(isinstance(item, int) for item in prompt):
        prompts = [_token_ids(server, prompt, "prompt")]
    else:  # texts, or lists of token ids
        prompts = [
            _encode(engine, item, True, f"prompt.{i}")
            if isinstance(item, str)
            else _token_ids(server, item, f"prompt.{i}")
            for i, item in enumerate(prompt)
        ]
    prepared = await _prepare(
        server, body, prompts, (body.max_tokens, "max_tokens"), "prompt", body.logprobs
    )
    generation = Generation(server, prepared.requests, arrived)
    header = {
        "id": f"cmpl-{secrets.token_hex(12)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": server.name,
    }
    if body.stream:
        return _stream(
            generation,
            _completion_chunks(server, generation, header, prepared, body.include_usage),
        )
    if not await _complete(generation, request):
        return Response(status_code=CLIENT_GONE)
    choices = [
        {
            "index": c.index,
            "text": "".join(c.text),
            "logprobs": _completion_logprobs(server, c.logprobs, 0)
            if body.logprobs is not None
            else None,
            "finish_reason": c.finish_reason,
        }
        for c in generation.choices
    ]
    usage = _usage(prepared.prompt_tokens, generation.completion_tokens())
    return JSONResponse({**header, "choices": choices, "usage": usage})


async def _completion_chunks(
    server: Server,
    generation: Generation,
    header: dict[str, Any],
    prepared: Prepared,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    offsets = [0] * len(generation.choices)
    extra = {"usage": None} if include_usage else {}
    async for choice, event in generation.events():
        if not event.text and event.finish_reason is None and event.logprob is None:
            continue
        logprobs = None
        if event.logprob is not None:
            logprobs = _completion_logprobs(server, [event.logprob], offsets[choice.index])
        offsets[choice.index] += len(event.text)
        item = {
            "index": choice.index,
            "text": event.text,
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason if event.finish_reason else None,
        }
        yield {**header, "choices": [item], **extra}
    if include_usage:
        usage = _usage(prepared.prompt_tokens, generation.completion_tokens())
        yield {**header, "choices": [], "usage": usage}


def _completion_logprobs(server: Server, entries: list[TokenLogprob], offset: int) -> dict:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        text = server.token_text(entry.token)
        tokens.append(text)
        values.append(entry.logprob)
        tops.append({server.token_text(t): v for t, v in entry.top})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


async def _chat(server: Server, request: Request, arrived: float) -> Response:
    engine = _generative(server, "chat completions")
    body: ChatCompletionRequest = parse(ChatCompletionRequest, await request.body())
    _check_model(server, body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(
            "top_logprobs: set logprobs to true to get top_logprobs",
            param="top_logprobs",
            code="invalid_value",
        )
    if server.chat is None:
        raise no_template(server.name)
    text = server.chat.render(body.messages)
    # A decoder-only template writes the bos itself; an encoder's input keeps its framing.
    seq2seq = isinstance(server.model, Seq2SeqModel)
    prompts = [_encode(engine, text, seq2seq, "messages")]
    top = (body.top_logprobs or 0) if body.logprobs else None
    prepared = await _prepare(server, body, prompts, body.token_budget, "messages", top)
    generation = Generation(server, prepared.requests, arrived)
    header = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": server.name,
    }
    if body.stream:
        chunks = _chat_chunks(server, generation, header, prepared, body.include_usage)
        return _stream(generation, chunks)
    if not await _complete(generation, request):
        return Response(status_code=CLIENT_GONE)
    choices = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": "".join(c.text), "refusal": None},
            "logprobs": {"content": _chat_logprobs(server, c.logprobs), "refusal": None}
            if body.logprobs
            else None,
            "finish_reason": c.finish_reason,
        }
        for c in generation.choices
    ]
    usage = _usage(prepared.prompt_tokens, generation.completion_tokens())
    return JSONResponse({**header, "choices": choices, "usage": usage})


async def _chat_chunks(
    server: Server,
    generation: Generation,
    header: dict[str, Any],
    prepared: Prepared,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    header = {**header, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    for choice in generation.choices:  # the role first, as OpenAI sends it
        delta = {"role": "assistant", "content": ""}
        item = {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}
        yield {**header, "choices": [item], **extra}
    async for choice, event in generation.events():
        if not event.text and event.finish_reason is None and event.logprob is None:
            continue
        logprobs = None
        if event.logprob is not None:
            logprobs = {"content": _chat_logprobs(server, [event.logprob]), "refusal": None}
        item = {
            "index": choice.index,
            "delta": {"content": event.text} if event.text else {},
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason if event.finish_reason else None,
        }
        yield {**header, "choices": [item], **extra}
    if include_usage:
        usage = _usage(prepared.prompt_tokens, generation.completion_tokens())
        yield {**header, "choices": [], "usage": usage}


def _chat_logprobs(server: Server, entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI's chat logprobs content: token, logprob, bytes, top_logprobs."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = server.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [
        {**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
        for e in entries
    ]


async def _complete(generation: Generation, request: Request) -> bool:
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
            generation.server.metrics.cancelled.inc()
    if not work.done() or work.cancelled():
        return False
    work.result()  # the engine's failure, if any
    return True


def _stream(generation: Generation, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
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
                generation.server.metrics.cancelled.inc()
            generation.cancel()
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# ----------------------------------------------------------------------------------------
# Embeddings


async def _embeddings(server: Server, request: Request, arrived: float) -> Response:
    model = server.model
    if not isinstance(model, EncoderModel):
        raise ApiError(
            f"the model {server.name!r} generates text; embeddings come from an encoder-only "
            "model (serve one with llmspec serve)",
            code="unsupported_model",
        )
    body: EmbeddingRequest = parse(EmbeddingRequest, await request.body())
    _check_model(server, body.model)
    texts = body.texts

    def embed() -> tuple[np.ndarray, int]:
        # the ids fed (each text framed), for usage; embed frames them the same way
        counts = sum(len(ids) for ids in model._texts(texts))
        return model.embed(texts, pooling="mean", normalize=True), counts

    try:
        vectors, prompt_tokens = await run_in_threadpool(embed)
    except RuntimeInputError as err:
        message = str(err)
        raise ApiError(f"input: {message}", param="input", code="invalid_value") from None
    server.metrics.prompt_tokens.inc(prompt_tokens)
    data = []
    for index, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            value = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": server.name, "usage": usage})


__all__ = ["Server", "create_app"]
