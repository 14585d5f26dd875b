"""An artifact's tokenizer behind one guard: every call into the tokenizers library is here.

The tokenizers library is Rust. A tokenizer.json can make it fail in two ways: with an
ordinary exception (a malformed file, a bad regex), or with a Rust panic, which pyo3 raises
as ``pyo3_runtime.PanicException``, a ``BaseException`` that ``except Exception`` does not
catch (a Replace normalizer whose regex matches the empty string panics with "index out of
bounds" on every text; a catastrophic Split regex such as ``^(\\w+\\s?)*$`` exceeds
Oniguruma's backtracking limit and panics on a long enough text). :class:`ArtifactTokenizer`
wraps the library's ``Tokenizer`` and turns both into our error types, so that a server
worker never dies of a tokenizer and a user never sees a traceback:

* loading: ``tokenizer.json`` is read with the bounded reader (a regular file of at most
  :data:`MAX_TOKENIZER_BYTES`) and parsed by the library; any failure is an
  :class:`~runtime.artifact.ArtifactError` naming the file;
* text to encode must be a ``str`` of valid Unicode: a lone surrogate (``"\\ud800"`` from
  Python, or a command-line argument that was not UTF-8, which Python keeps as surrogate
  escapes) is a :class:`~runtime.errors.RuntimeInputError` naming the position and saying
  to pass UTF-8 text; bytes are refused (the caller knows their encoding, we would guess);
* any failure of the library on valid arguments (encode, decode, token lookups), panics
  included, is the artifact's tokenizer failing, not the request: an ``ArtifactError`` naming
  ``tokenizer.json``, the operation and the library's message. A server can tell the two
  apart: RuntimeInputError is the caller's to fix, ArtifactError the deployment's.

Fidelity: texts encode and decode exactly as with transformers' fast tokenizer loaded from the
same file (tests/runtime/test_tokenizer_fidelity.py checks real files). Padding and truncation
that a tokenizer.json enables are turned off on load, as transformers turns them off for every
call that does not ask for them (the runtime pads batches itself and refuses a text beyond the
context window). :attr:`ArtifactTokenizer.frames_texts` says whether the file's post-processor
adds special tokens, which the runtime then uses to frame texts (see :mod:`runtime.model`).
What transformers takes from tokenizer_config.json rather than tokenizer.json
(``clean_up_tokenization_spaces``) is written into the file by the importer
(:mod:`llmspec.importers.hf.vocabulary`).

Only the panic is caught besides ``Exception``: KeyboardInterrupt and SystemExit pass.
The method names and signatures mirror the library's ``Tokenizer``, so code written for it
(``llmspec.inspect.evaluate``) takes this class unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime.artifact import ArtifactError
from runtime.errors import RuntimeInputError
from runtime.reading import MiB, UnreadableFile, read_text

__all__ = ["MAX_TOKENIZER_BYTES", "ArtifactTokenizer", "check_text", "is_panic"]

# The largest tokenizer.json read. Real ones are far smaller: GPT-2's is 1.4 MiB, Llama 3's
# (128k tokens) 8.7 MiB, Gemma's (256k tokens) 33 MiB.
MAX_TOKENIZER_BYTES = 256 * MiB

_T = TypeVar("_T")


def is_panic(err: BaseException) -> bool:
    """Whether ``err`` is a Rust panic raised through pyo3 (``pyo3_runtime.PanicException``,
    which pyo3 creates at run time, so it cannot be imported by name)."""
    return any(
        cls.__name__ == "PanicException" and cls.__module__ == "pyo3_runtime"
        for cls in type(err).__mro__
    )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def check_text(text: Any, what: str) -> str:
    """``text`` if it is a ``str`` of valid Unicode, else a RuntimeInputError naming ``what``
    (``"prompt 0"``) and, for a lone surrogate, its position."""
    if isinstance(text, bytes | bytearray):
        raise RuntimeInputError(
            f"{what} is bytes; decode it to a str first (e.g. data.decode('utf-8'))"
        )
    if not isinstance(text, str):
        raise RuntimeInputError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        escaped = f"the byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else None
        found = escaped or f"a lone surrogate U+{ord(bad):04X}"
        raise RuntimeInputError(
            f"{what}: character {err.start} is {found}, which is not valid text; pass valid "
            "UTF-8 text (on the command line: an argument encoded in UTF-8)"
        ) from None
    return text


class ArtifactTokenizer:
    """The tokenizers-library ``Tokenizer`` of an artifact, every call guarded (see the
    module docstring). ``path`` names the file in messages."""

    def __init__(self, tokenizer: Any, path: str | os.PathLike[str]) -> None:
        self._tokenizer = tokenizer
        self.path = Path(path)
        # A tokenizer.json may enable padding and truncation (sentence-transformers files pad
        # every text to 128 tokens); transformers turns both off for every call that does not
        # ask for them, and so do we: the runtime pads batches itself and refuses a text
        # beyond the context window instead of cutting it.
        self._call("turn off its padding", "no_padding")
        self._call("turn off its truncation", "no_truncation")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ArtifactTokenizer:
        """Read and parse ``path``; raises ArtifactError naming it."""
        try:
            text = read_text(path, MAX_TOKENIZER_BYTES, "tokenizer.json")
        except UnreadableFile as err:
            raise ArtifactError(f"{err}; export the artifact again") from None
        from tokenizers import Tokenizer

        tokenizer = _guarded(
            lambda: Tokenizer.from_str(text),
            lambda err: (
                f"{os.fspath(path)}: not a readable tokenizer.json ({err}); "
                "export the artifact again"
            ),
        )
        return cls(tokenizer, path)

    @property
    def raw(self) -> Any:
        """The library's ``Tokenizer`` itself, unguarded."""
        return self._tokenizer

    def _call(self, operation: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.raw.<method>(*args, **kwargs)``, guarded; ``operation`` says what it was doing."""
        function = getattr(self._tokenizer, method)
        return _guarded(
            lambda: function(*args, **kwargs),
            lambda err: (
                f"{self.path}: the tokenizer failed to {operation} ({err}); the "
                "artifact's tokenizer.json is broken, export the artifact again"
            ),
        )

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        *,
        what: str = "text",
        pair: str | None = None,
    ) -> Any:
        """The library's ``Encoding`` of ``text`` (``.ids``, ``.tokens``, ...), or of the
        pair ``text``, ``pair`` (framed by the post-processor's pair template, BERT's
        ``[CLS] A [SEP] B [SEP]``); ``what`` names the text in a RuntimeInputError. An empty
        ``pair`` is no pair, as in transformers."""
        checked = check_text(text, what)
        second = None if pair is None else check_text(pair, f"the pair of {what}") or None
        return self._call(
            f"encode {what}", "encode", checked, second, add_special_tokens=add_special_tokens
        )

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Any]:
        """The ``Encoding`` of every text, in parallel."""
        checked = [check_text(text, f"text {row}") for row, text in enumerate(texts)]
        return list(
            self._call(
                "encode a batch", "encode_batch", checked, add_special_tokens=add_special_tokens
            )
        )

    def ids(self, text: str, *, what: str = "text", add_special_tokens: bool = False) -> list[int]:
        """The token ids of ``text``: no special tokens added, or with ``add_special_tokens``
        those the file's post-processor adds (none without one)."""
        encoding = self.encode(text, add_special_tokens=add_special_tokens, what=what)
        return [int(i) for i in encoding.ids]

    @property
    def frames_texts(self) -> bool:
        """Whether the file's post-processor adds special tokens to a single text (BERT's
        ``[CLS] $A [SEP]``, RoBERTa's ``<s> $A </s>``, Llama's ``<s> $A``, T5's ``$A </s>``);
        False without one (GPT-2's ByteLevel adds none, llmspec's own tokenizers have none)."""
        processor = self._tokenizer.post_processor
        if processor is None:
            return False
        added = _guarded(
            lambda: processor.num_special_tokens_to_add(False),
            lambda err: (
                f"{self.path}: the tokenizer failed to count its post-processor's tokens "
                f"({err}); the artifact's tokenizer.json is broken, export the artifact again"
            ),
        )
        return int(added) > 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of the token ids ``ids`` (ids outside the vocabulary give no text)."""
        return str(
            self._call("decode", "decode", _token_ids(ids), skip_special_tokens=skip_special_tokens)
        )

    def token_to_id(self, token: str) -> int | None:
        if not isinstance(token, str):
            raise TypeError(f"a token is a str, got {type(token).__name__}")
        found = self._call("look up a token", "token_to_id", token)
        return None if found is None else int(found)

    def id_to_token(self, token_id: int) -> str | None:
        (checked,) = _token_ids([token_id])
        found = self._call("look up a token id", "id_to_token", checked)
        return None if found is None else str(found)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return dict(
            self._call("list its vocabulary", "get_vocab", with_added_tokens=with_added_tokens)
        )

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return int(
            self._call(
                "count its vocabulary", "get_vocab_size", with_added_tokens=with_added_tokens
            )
        )

    def __repr__(self) -> str:
        return f"ArtifactTokenizer({str(self.path)!r})"


def _token_ids(ids: Sequence[int]) -> list[int]:
    """``ids`` as Python ints >= 0 (the library takes unsigned 32-bit ids); a TypeError or
    ValueError for anything else, which is the caller's mistake, not the tokenizer's."""
    result = []
    for token in ids:
        if isinstance(token, bool) or not hasattr(token, "__index__"):
            raise TypeError(f"token ids are integers, got {token!r}")
        value = int(token)
        if not 0 <= value < 1 << 32:
            raise ValueError(f"token id {value} is outside [0, 2**32)")
        result.append(value)
    return result


def _guarded(call: Callable[[], _T], message: Callable[[str], str]) -> _T:
    """``call()``, with any exception or Rust panic it raises as an ArtifactError whose text
    is ``message(first line of the error)``."""
    try:
        return call()
    except Exception as err:  # the library raises bare Exceptions for its errors
        raise ArtifactError(message(_first_line(err))) from None
    except BaseException as err:
        if not is_panic(err):
            raise  # KeyboardInterrupt, SystemExit, GeneratorExit: not ours to stop
        raise ArtifactError(message(f"panic: {_first_line(err)}")) from None
