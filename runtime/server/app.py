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

import base64
import contextlib
import hmac
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
from runtime.batching import Engine, EngineRequest
from runtime.decoding import DecodingError
from runtime.errors import RuntimeInputError
from runtime.model import EncoderModel, GenerativeModel, Seq2SeqModel
from runtime.sampling import SamplerChain
from runtime.server.chat import ChatTemplate, no_template
from runtime.server.generation import Generation, Prepared, complete, stream
from runtime.server.metrics import CONTENT_TYPE, Metrics
from runtime.server.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from runtime.server.responses import (
    chat_chunks,
    chat_logprobs,
    completion_chunks,
    completion_logprobs,
    usage_counts,
)
from runtime.server.sampling import decoding_chain

_log = logging.getLogger("llmspec.server")
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
    generation = Generation(engine, server.metrics, prepared.requests, arrived)
    header = {
        "id": f"cmpl-{secrets.token_hex(12)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": server.name,
    }
    if body.stream:
        return stream(
            generation,
            completion_chunks(server.token_text, generation, header, prepared, body.include_usage),
        )
    if not await complete(generation, request):
        return Response(status_code=CLIENT_GONE)
    choices = [
        {
            "index": c.index,
            "text": "".join(c.text),
            "logprobs": completion_logprobs(server.token_text, c.logprobs, 0)
            if body.logprobs is not None
            else None,
            "finish_reason": c.finish_reason,
        }
        for c in generation.choices
    ]
    usage = usage_counts(prepared.prompt_tokens, generation.completion_tokens())
    return JSONResponse({**header, "choices": choices, "usage": usage})


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
    generation = Generation(engine, server.metrics, prepared.requests, arrived)
    header = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": server.name,
    }
    if body.stream:
        chunks = chat_chunks(server.token_text, generation, header, prepared, body.include_usage)
        return stream(generation, chunks)
    if not await complete(generation, request):
        return Response(status_code=CLIENT_GONE)
    choices = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": "".join(c.text), "refusal": None},
            "logprobs": {"content": chat_logprobs(server.token_text, c.logprobs), "refusal": None}
            if body.logprobs
            else None,
            "finish_reason": c.finish_reason,
        }
        for c in generation.choices
    ]
    usage = usage_counts(prepared.prompt_tokens, generation.completion_tokens())
    return JSONResponse({**header, "choices": choices, "usage": usage})


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
        counts = sum(len(ids) for ids in model.token_ids(texts))
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
