"""OpenAI's response shapes: usage, stream chunks and logprobs.

Completions' logprobs are ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``;
chat's ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal"}``. A
token's text is what the tokenizer decodes for it alone (``token_text``). A stream sends a chunk
per event that adds text, ends a choice or carries a logprob (a chat stream starts each choice
with its role); with ``include_usage`` every chunk has ``"usage": null`` and a last chunk with
no choices has the usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from runtime.results import TokenLogprob
from runtime.server.generation import Generation, Prepared


def usage_counts(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def completion_chunks(
    token_text: Callable[[int], str],
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
            logprobs = completion_logprobs(token_text, [event.logprob], offsets[choice.index])
        offsets[choice.index] += len(event.text)
        item = {
            "index": choice.index,
            "text": event.text,
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason if event.finish_reason else None,
        }
        yield {**header, "choices": [item], **extra}
    if include_usage:
        usage = usage_counts(prepared.prompt_tokens, generation.completion_tokens())
        yield {**header, "choices": [], "usage": usage}


def completion_logprobs(
    token_text: Callable[[int], str], entries: list[TokenLogprob], offset: int
) -> dict:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        text = token_text(entry.token)
        tokens.append(text)
        values.append(entry.logprob)
        tops.append({token_text(t): v for t, v in entry.top})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


async def chat_chunks(
    token_text: Callable[[int], str],
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
            logprobs = {"content": chat_logprobs(token_text, [event.logprob]), "refusal": None}
        item = {
            "index": choice.index,
            "delta": {"content": event.text} if event.text else {},
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason if event.finish_reason else None,
        }
        yield {**header, "choices": [item], **extra}
    if include_usage:
        usage = usage_counts(prepared.prompt_tokens, generation.completion_tokens())
        yield {**header, "choices": [], "usage": usage}


def chat_logprobs(
    token_text: Callable[[int], str], entries: list[TokenLogprob]
) -> list[dict[str, Any]]:
    """OpenAI's chat logprobs content: token, logprob, bytes, top_logprobs."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [
        {**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
        for e in entries
    ]
