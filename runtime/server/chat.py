"""Chat templates: an artifact's ``chat_template.jinja`` rendered in jinja2's sandbox.

The template comes from the model's Hugging Face ``tokenizer_config.json`` (``llmspec
import-hf`` copies it) or from a ``chat_template.jinja`` beside the spec that was exported. It is
rendered as transformers' ``apply_chat_template`` renders it: an
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with ``trim_blocks`` and
``lstrip_blocks``, the variables ``messages`` (dicts with ``role`` and ``content``),
``add_generation_prompt=True``, ``bos_token`` and ``eos_token`` (their texts), and the globals
``raise_exception`` (a template's own refusal, e.g. "roles must alternate") and
``strftime_now``. The sandbox keeps a template from reaching Python's internals; what a template
refuses, or a sandbox violation, is the request's 400, with the template's message. A model
without a template gets no guess: :func:`no_template` says how to give it one.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtime.errors import LlmspecError
from runtime.server.protocol import ApiError, ChatMessage


class ChatTemplateError(ValueError, LlmspecError):
    """An artifact's chat template does not compile."""


class _TemplateRefusal(Exception):
    """What ``raise_exception(message)`` in a template raises."""


def _raise_exception(message: str) -> None:
    raise _TemplateRefusal(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    # transformers' tojson: non-ASCII kept (jinja2's own escapes it for HTML)
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


class ChatTemplate:
    """A compiled chat template; :meth:`render` turns messages into the prompt's text.

    Args:
        source: the template's Jinja text.
        bos_token, eos_token: the texts of the model's bos and eos tokens ("" without one).
    Raises :class:`ChatTemplateError` when the template does not compile.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self.template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(
                f"the artifact's chat template does not compile: {err.message} (line "
                f"{err.lineno}); fix chat_template.jinja and export the artifact again"
            ) from None
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt for ``messages``, ending in the assistant's turn. Raises :class:`ApiError`
        (400, param ``messages``) for what the template refuses."""
        turns = [
            {"role": m.role, "content": m.text, **({"name": m.name} if m.name else {})}
            for m in messages
        ]
        try:
            return self.template.render(
                messages=turns,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except _TemplateRefusal as err:
            raise ApiError(
                f"messages: the model's chat template refuses them: {err}",
                param="messages",
                code="chat_template_refused",
            ) from None
        except jinja2.exceptions.SecurityError as err:
            raise ApiError(
                f"messages: the chat template tried an unsafe operation ({err})",
                param="messages",
                code="chat_template_refused",
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as err:
            raise ApiError(
                f"messages: the model's chat template cannot render them ({err})",
                param="messages",
                code="chat_template_refused",
            ) from None


def no_template(model_name: str) -> ApiError:
    """The 400 for a chat request to a model without a chat template."""
    return ApiError(
        f"the model {model_name!r} has no chat template, so its chat format is unknown (and "
        "this server does not guess one). Use /v1/completions with a prompt you format, or "
        "give the artifact a template: `llmspec import-hf` of a Hugging Face model whose "
        "tokenizer_config.json has a chat_template, or a chat_template.jinja beside the "
        "spec.yaml and weights you export",
        param="messages",
        code="no_chat_template",
    )
