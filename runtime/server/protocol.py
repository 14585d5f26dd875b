"""The OpenAI API's requests as pydantic models, and its error shape.

A request body is parsed by :func:`parse` in pydantic's strict JSON mode against one of
:class:`CompletionRequest`, :class:`ChatCompletionRequest` and :class:`EmbeddingRequest`, which
forbid unknown fields. Every failure (bad JSON, an unknown field, a wrong type, a value out of
range, an empty ``messages``) becomes one :class:`ApiError`, which the app answers as OpenAI
does::

    400 {"error": {"message": "...", "type": "invalid_request_error", "param": "messages",
                   "code": "..."}}

``param`` names the field by its path (``messages.0.role``). The fields are OpenAI's (their
ranges too), plus the extensions vLLM also accepts: ``top_k``, ``min_p``, ``typical_p``,
``repetition_penalty``, ``no_repeat_ngram_size`` (see :mod:`runtime.server.sampling` for how
they map onto a decoding chain). OpenAI fields this server does not implement (``echo``,
``suffix``, ``best_of`` > 1, tools) are refused by name rather than ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import LlmspecError

# OpenAI's bounds, where it has them.
MAX_N = 16  # choices per request: each is a row of the batch
MAX_STOP = 4
MAX_LOGIT_BIAS = 300
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_EMBEDDING_INPUTS = 2048
MAX_SEED = 2**63 - 1

# OpenAI fields this server knows of and does not implement: named in the error, not ignored.
UNSUPPORTED = frozenset(
    {
        "suffix",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "audio",
        "modalities",
        "prediction",
        "dimensions",
        "reasoning_effort",
        "web_search_options",
        "tool_calls",
        "tool_call_id",
        "image_url",
    }
)


class ApiError(LlmspecError):
    """A request refused, answered in OpenAI's shape: ``status``, ``message``, ``param`` (the
    field), ``type`` and ``code``; ``headers`` such as Retry-After."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------------------
# What completions and chat completions share


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJsonObject(_Request):
    type: Literal["json_object"]


class JsonSchema(_Request):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


class _Sampling(_Request):
    """The sampling fields of both generation endpoints (OpenAI's, then the extensions)."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # extensions (as vLLM's): -1 and 0 disable top_k
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    typical_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(value)}")
        if value == "":
            raise ValueError("a stop string must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens, got {len(value)}")
        for key in value:
            if not key.isdigit():
                raise ValueError(f"keys are token ids written as strings ('50256'), got {key!r}")
        return value

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# ----------------------------------------------------------------------------------------
# The endpoints


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a text, texts, token ids or lists of them."""

    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: Literal[False] = False
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty; give a text or token ids")
        if isinstance(value, list) and any(isinstance(v, list) and not v for v in value):
            raise ValueError("a prompt's token id list is empty")
        return value


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    store: bool | None = None
    metadata: dict[str, str] | None = None

    @property
    def token_budget(self) -> tuple[int | None, str]:
        """The requested new tokens and the field that set them (max_completion_tokens, which
        replaced max_tokens, first)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: texts only (token-id inputs are not taken)."""

    input: str | list[str] = Field(union_mode="left_to_right")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("the input list is empty; give a text or a list of texts")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} texts, got {len(texts)}")
        for index, text in enumerate(texts):
            if not text:
                raise ValueError(f"text {index} is empty")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ----------------------------------------------------------------------------------------
# Parsing


def parse(model: type[_Request], body: bytes) -> Any:
    """``body`` (the raw request body) as ``model``; raises :class:`ApiError` (400) naming the
    first problem's field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise _api_error(model, err, body) from None


def _location(loc: tuple[Any, ...], data: Any) -> list[str]:
    """The part of an error's location that is a path in the request (``messages.0.role``),
    without the names pydantic inserts for the members of a union (``prompt.str``): followed
    through ``data`` as far as it goes."""
    path: list[str] = []
    for part in loc:
        if (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        ):
            data = data[part]
        else:
            break
        path.append(str(part))
    return path


# What the union-typed fields take, for a value that is none of it.
FORMS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of such lists",
    "stop": "a non-empty string or a list of up to 4 of them",
    "content": 'a string or a list of text parts ({"type": "text", "text": "..."})',
    "input": "a string or a list of strings",
}


def _api_error(model: type[_Request], err: ValidationError, body: bytes) -> ApiError:
    errors = err.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    if kind == "json_invalid":
        detail = first["ctx"].get("error", "") if first.get("ctx") else ""
        return ApiError(
            f"the request body is not valid JSON ({detail}); send a JSON object",
            code="invalid_json",
        )
    data = json.loads(body)
    location = _location(first["loc"], data)
    if kind == "missing":  # the path to its object, then its name
        location = [*_location(first["loc"][:-1], data), str(first["loc"][-1])]
    param = ".".join(location) or None
    if kind == "model_type" or (kind == "dict_type" and not location):
        return ApiError("the request body must be a JSON object", code="invalid_type")
    if kind == "extra_forbidden":
        name = location[-1]
        if name in UNSUPPORTED:
            message = f"{param}: this server does not support the OpenAI field {name!r}"
        else:
            known = ", ".join(sorted(_known_fields(model, location[:-1])))
            message = f"{param}: unknown field; the known fields here are: {known}"
        return ApiError(message, param=param, code="unknown_field")
    if kind == "missing":
        return ApiError(f"{param}: the field is required", param=param, code="missing_field")
    if kind == "too_short" and location and location[-1] == "messages":
        return ApiError(
            "messages is empty; give at least one message, e.g. "
            '[{"role": "user", "content": "Hello"}]',
            param=param,
            code="empty_messages",
        )
    given = json.dumps(first.get("input"))[:80] if "input" in first else ""
    shown = f" (got {given})" if given else ""
    message = first["msg"].removeprefix("Value error, ")
    union = len({str(e["loc"]) for e in errors if _location(e["loc"], data) == location}) > 1
    if union and location and location[-1] in FORMS:  # each member said what it wanted
        message = f"must be {FORMS[location[-1]]}"
    return ApiError(f"{param}: {message}{shown}", param=param, code="invalid_value")


def _known_fields(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the (nested) model at ``path`` (list indexes skipped)."""
    current: Any = model
    for part in path:
        if part.isdigit() or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return []
        current = _model_in(info.annotation)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``list[ChatMessage] | None`` -> ChatMessage)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
