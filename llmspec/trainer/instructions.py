"""Instruction data for fine-tuning: JSONL records in, model batches with loss on the responses
only out.

Numpy only at import (jinja2 is imported when a chat template is rendered).

**Records.** One JSON object per line (blank lines are skipped), either

* ``{"prompt": "...", "response": "..."}``, or
* ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`` with at
  least one assistant message.

Anything else stops the run with :class:`InstructionError` naming ``file:line`` and what the
line should hold. A prompt/response record is the conversation ``[user: prompt, assistant:
response]``.

**Rendering.** A conversation becomes *segments* of text, each trained (an assistant message)
or not (everything else):

* with the model's **chat template** (``chat_template.jinja`` in the model directory, as
  ``llmspec import-hf`` writes it), rendered in jinja2's immutable sandbox as transformers
  renders it (``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``,
  ``raise_exception``). Assistant message *i*'s segment is what rendering ``messages[:i + 1]``
  adds to rendering ``messages[:i]`` with the generation prompt, so the template's own end of
  turn (``<|im_end|>``, ``</s>``) is trained; a template that does not render conversations
  incrementally is refused;
* otherwise with the **plain template**: the spec's ``finetune.template`` (which also takes
  precedence over a chat template), else :data:`PLAIN_PROMPT` (Alpaca's)::

      ### Instruction:
      {prompt}

      ### Response:
      {response}<eos>

  a system message is put first, followed by a blank line; the eos token after each response
  is trained, so the model learns to stop. This is the text to give ``llmspec generate
  --prompt`` (up to and including ``### Response:\\n``) once the model is fine-tuned.

Each segment is tokenized on its own (no special tokens added) and the pieces are joined, so a
token never straddles the prompt and the response.

**Examples.** A decoder-only example is the whole conversation: ``input_ids``, and ``labels``
equal to them on trained segments and -100 elsewhere (the model shifts them: the logits at
position *t* are scored against label *t + 1*), so masked positions never reach the loss or the
gradient. No bos is prepended: ``llmspec generate`` feeds a decoder-only prompt as its tokens
(a chat template adds its own). An encoder-decoder example puts everything before the last
assistant message in the encoder (framed as the runtime frames an encoder input: by the
tokenizer's post-processor when it adds tokens, else ``[bos] tokens [eos]``), and the last
assistant message, followed by eos, in the decoder (``decoder_input_ids`` are the labels
shifted right behind the decoder start token). An example longer than ``seq_len`` is cut at its
end (the encoder input keeps its eos); one left with no trained token is dropped, and counted.

**Batching, no packing.** The generated models take a ``(B, S)`` padding mask and build the
causal mask themselves, so tokens of two examples packed into one row would attend to each
other (position ids restarting at each example would not stop that). Rather than change the
generated models (and every golden), examples are not packed: each row holds one example,
padded on the right (attention mask 0, labels -100), and to keep padding small each epoch's
shuffled examples are sorted by length within windows of :data:`LENGTH_WINDOW` batches
(:func:`epoch_order`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmspec.trainer.objectives import IGNORE, Features, IntArray, TokenIds
from llmspec.trainer.settings import TrainError
from runtime.reading import UnreadableFile, read_bytes, read_text

MAX_DATA_BYTES = 1 << 30
MAX_TEMPLATE_BYTES = 1 << 20
ROLES = ("system", "user", "assistant")
PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
LENGTH_WINDOW = 8  # batches whose examples are sorted by length together
EVAL_FRACTION, EVAL_MAX = 0.05, 64

Message = dict[str, str]


class InstructionError(TrainError):
    """Instruction data that cannot be used; the message names the file and line."""


# ----------------------------------------------------------------------------------------
# Records

RECORD_HELP = (
    'each line must be a JSON object {"prompt": TEXT, "response": TEXT} or {"messages": '
    '[{"role": "system"|"user"|"assistant", "content": TEXT}, ...]} with an assistant message'
)


def _conversation(record: Any) -> list[Message]:
    """The record as messages; ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    if "messages" in record:
        extra = sorted(set(record) - {"messages"})
        if extra:
            raise ValueError(f"unexpected field(s) {', '.join(extra)} beside messages")
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        out = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise ValueError(f"messages[{index}] must be an object with role and content")
            role, content = message["role"], message["content"]
            if role not in ROLES:
                raise ValueError(
                    f"messages[{index}].role is {role!r}; use one of {', '.join(ROLES)}"
                )
            if not isinstance(content, str):
                raise ValueError(f"messages[{index}].content must be a string")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise ValueError("messages has no assistant message to train on")
        return out
    missing = [k for k in ("prompt", "response") if k not in record]
    if missing:
        raise ValueError(f"missing {' and '.join(missing)}")
    extra = sorted(set(record) - {"prompt", "response"})
    if extra:
        raise ValueError(f"unexpected field(s) {', '.join(extra)}")
    for key in ("prompt", "response"):
        if not isinstance(record[key], str):
            raise ValueError(f"{key} must be a string, got {type(record[key]).__name__}")
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["response"]},
    ]


def jsonl_files(data: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files of ``data``: files as given, a directory as its ``*.jsonl`` files (below it,
    in name order)."""
    out: list[Path] = []
    for item in data:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("*.jsonl"))
            if not found:
                raise InstructionError(f"data {path}: a directory without *.jsonl files")
            out += found
        else:
            out.append(path)
    return out


def read_conversations(path: str | os.PathLike[str]) -> list[list[Message]]:
    """The conversations of a JSONL file; :class:`InstructionError` naming ``file:line`` for a
    line that is not UTF-8, not JSON, or not a record (see the module docstring)."""
    try:
        data = read_bytes(path, MAX_DATA_BYTES, "instruction file")
    except UnreadableFile as err:
        raise InstructionError(f"data {err}") from None
    except FileNotFoundError:
        raise InstructionError(f"data not found: {path}") from None
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{os.fspath(path)}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InstructionError(
                f"{where}: not UTF-8 (byte {err.start}); save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            why = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            raise InstructionError(f"{where}: not JSON ({why}); {RECORD_HELP}") from None
        try:
            out.append(_conversation(record))
        except ValueError as err:
            raise InstructionError(f"{where}: {err}; {RECORD_HELP}") from None
    if not out:
        raise InstructionError(f"{os.fspath(path)}: no records; {RECORD_HELP}")
    return out


# ----------------------------------------------------------------------------------------
# Rendering

Segment = tuple[str, bool]  # (text, trained)


def plain_segments(messages: Sequence[Message], prompt: str = PLAIN_PROMPT) -> list[Segment]:
    """The conversation in the plain template ``prompt`` (``{prompt}`` where the instruction
    goes); the eos after each response is added by the tokenizing step (a marker segment
    ``("", True)`` stands for it)."""
    out: list[Segment] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            out.append((content + "\n\n", False))
        elif role == "user":
            out.append((prompt.replace("{prompt}", content), False))
        else:
            out += [(content, True), ("", True)]  # the response, then eos
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template, rendered as transformers renders it, in jinja2's sandbox."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def read(cls, path: Path, bos: str, eos: str) -> ChatTemplate:
        try:
            text = read_text(path, MAX_TEMPLATE_BYTES, "chat template")
        except UnreadableFile as err:
            raise InstructionError(str(err)) from None
        template = cls(text, bos, eos)
        template._compiled()  # a syntax error is reported before training
        return template

    def _compiled(self) -> Any:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = raise_exception
        try:
            return environment.from_string(self.source)
        except jinja2.TemplateError as err:
            raise InstructionError(f"{CHAT_TEMPLATE_FILE}: {err}") from None

    def render(self, messages: Sequence[Message], generation_prompt: bool) -> str:
        import jinja2

        try:
            return str(
                self._compiled().render(
                    messages=list(messages),
                    add_generation_prompt=generation_prompt,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                )
            )
        except (jinja2.TemplateError, ValueError, TypeError) as err:
            raise InstructionError(f"{CHAT_TEMPLATE_FILE} cannot render a record: {err}") from None

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        out: list[Segment] = []
        done = ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:index], True)
            full = self.render(messages[: index + 1], False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise InstructionError(
                    f"{CHAT_TEMPLATE_FILE} does not render conversations incrementally (a "
                    "conversation's rendering does not start with its first turns'), so the "
                    "assistant's tokens cannot be told apart; use the plain template (remove "
                    "the file from the model directory)"
                )
            out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        rest = self.render(messages, False)[len(done) :]
        if rest:
            out.append((rest, False))
        return out


# ----------------------------------------------------------------------------------------
# Examples


@dataclass(frozen=True)
class Renderer:
    """Turns conversations into examples for one model: its tokenizer, ids, architecture."""

    tokenizer: Any
    ids: TokenIds
    encoder_decoder: bool
    seq_len: int
    template: ChatTemplate | None = None
    plain: str = PLAIN_PROMPT  # the plain template, when there is no chat template

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        if self.template is not None:
            return self.template.segments(messages)
        return plain_segments(messages, self.plain)

    def _tokens(self, segments: Sequence[Segment]) -> tuple[list[int], list[bool]]:
        tokens: list[int] = []
        trained: list[bool] = []
        for text, train in segments:
            if text == "" and train and self.template is None:
                piece = [self.ids.eos] if self.ids.eos is not None else []
            else:
                piece = self.tokenizer.encode(text, add_special_tokens=False).ids
            tokens += piece
            trained += [train] * len(piece)
        return tokens, trained

    def example(self, messages: Sequence[Message]) -> Features | None:
        """The example of one conversation (see the module docstring); None when nothing of
        its response fits ``seq_len``."""
        segments = self.segments(messages)
        if self.encoder_decoder:
            return self._seq2seq(segments)
        tokens, trained = self._tokens(segments)
        tokens, trained = tokens[: self.seq_len], trained[: self.seq_len]
        # the first token is never a target (the model scores t against t + 1)
        if not any(trained[1:]):
            return None
        ids = np.asarray(tokens, dtype=np.int64)
        labels = np.where(np.asarray(trained, dtype=bool), ids, IGNORE).astype(np.int64)
        return {"input_ids": ids, "labels": labels}

    def _seq2seq(self, segments: Sequence[Segment]) -> Features | None:
        last = max(i for i, (text, train) in enumerate(segments) if train and text)
        source = "".join(text for text, _ in segments[:last])
        target = self.tokenizer.encode(segments[last][0], add_special_tokens=False).ids
        framed = self.tokenizer.encode(source, add_special_tokens=True).ids
        plain = self.tokenizer.encode(source, add_special_tokens=False).ids
        if len(framed) == len(plain):  # no post-processor framing: [bos] tokens [eos]
            head = [self.ids.bos] if self.ids.bos is not None else []
            tail = [self.ids.eos] if self.ids.eos is not None else []
            framed = head + plain + tail
        if len(framed) > self.seq_len:
            framed = framed[: self.seq_len - 1] + framed[-1:]
        labels = (target + ([self.ids.eos] if self.ids.eos is not None else []))[: self.seq_len]
        if not labels:
            return None
        start = self.ids.decoder_start if self.ids.decoder_start is not None else 0
        return {
            "input_ids": np.asarray(framed, dtype=np.int64),
            "decoder_input_ids": np.asarray([start, *labels[:-1]], dtype=np.int64),
            "labels": np.asarray(labels, dtype=np.int64),
        }

    def examples(self, conversations: Sequence[Sequence[Message]]) -> tuple[list[Features], int]:
        """(the examples, how many conversations were dropped for want of room)."""
        out = []
        dropped = 0
        for messages in conversations:
            example = self.example(messages)
            if example is None:
                dropped += 1
            else:
                out.append(example)
        return out, dropped


def _pad(rows: Sequence[IntArray], value: int) -> IntArray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def collate(examples: Sequence[Features], pad_id: int) -> Features:
    """Examples as one batch padded on the right (masks 0, labels -100 at padding)."""
    inputs = [e["input_ids"] for e in examples]
    batch: Features = {
        "input_ids": _pad(inputs, pad_id),
        "attention_mask": _pad([np.ones(len(r), np.int64) for r in inputs], 0),
        "labels": _pad([e["labels"] for e in examples], IGNORE),
    }
    if "decoder_input_ids" in examples[0]:
        decoder = [e["decoder_input_ids"] for e in examples]
        batch["decoder_input_ids"] = _pad(decoder, pad_id)
        batch["decoder_attention_mask"] = _pad([np.ones(len(r), np.int64) for r in decoder], 0)
    else:
        width = batch["input_ids"].shape[1]
        batch["position_ids"] = np.broadcast_to(
            np.arange(width, dtype=np.int64), batch["input_ids"].shape
        ).copy()
    return batch


def split_held_out(count: int, seed: int) -> tuple[IntArray, IntArray]:
    """(training indices, held-out indices): a seeded 5 % of ``count`` examples (at least 1
    when there are 2 or more, at most 64) is held out."""
    order = np.random.default_rng([seed, 2**31]).permutation(count)
    held = 0 if count < 2 else min(EVAL_MAX, max(1, round(EVAL_FRACTION * count)))
    return np.sort(order[held:]), np.sort(order[:held])


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> IntArray:
    """Epoch ``epoch``'s order of the examples (positions in ``lengths``): a seeded shuffle,
    sorted by length within windows of :data:`LENGTH_WINDOW` batches and cut into runs of
    ``batch_size``, whose order is shuffled again; step ``s`` takes the examples at positions
    ``s * batch_size ...`` of the endless sequence of epochs, so the data of a step is a
    function of the step (a resumed run reads what the killed one would have)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * LENGTH_WINDOW
    sized = np.asarray(lengths)
    for first in range(0, len(order), window):
        part = order[first : first + window]
        order[first : first + window] = part[np.argsort(sized[part], kind="stable")]
    runs = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return np.concatenate([runs[i] for i in rng.permutation(len(runs))])


def response_tokens(batch: Features, encoder_decoder: bool) -> int:
    """The targets a batch's loss averages over (after the causal shift for decoder-only)."""
    labels = batch["labels"] if encoder_decoder else batch["labels"][:, 1:]
    return int((labels != IGNORE).sum())
