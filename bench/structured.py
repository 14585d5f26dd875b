"""Structured-output engines compared: per-step mask cost and compile time for a JSON schema.

    python3 -m venv /tmp/structbench
    /tmp/structbench/bin/pip install -c constraints.txt xgrammar outlines-core llguidance \\
        numpy tokenizers
    /tmp/structbench/bin/python bench/structured.py [--repeats 3] [--tokenizer FILE ...]

Not run by CI, and not with the project's venv: xgrammar pulls in torch and transformers, which
the runtime must not need. Engines that are not installed are skipped with a note.

Tokenizers (real tokenizer.json files, nothing downloaded):
- ``32k``: Mistral 7B v0.1's SentencePiece BPE (32,000 tokens, byte fallback; Llama 2's layout),
  tests/data/tokenizers/mistral-7b-v0.1;
- ``152k``: a byte-level BPE the size of Qwen2's (151,643 tokens + 1 special): Claude v1's
  65,000-token byte-level BPE (tests/data/tokenizers/claude-v1) extended with 86,643 merges of
  two of its 20,000 first tokens, seeded. The added tokens are words joined to words, so the
  vocabulary's trie is larger and deeper, as a bigger BPE's is;
- any ``--tokenizer FILE`` (a tokenizer.json; its eos: the first special token named like one).

For each engine and tokenizer it measures:
- ``setup``: making the engine's tokenizer object from the tokenizer (once per model);
- ``compile``: the JSON schema to a ready matcher (llguidance: LLMatcher; xgrammar:
  GrammarCompiler.compile_json_schema with its cache off, and a GrammarMatcher; outlines-core:
  the schema's regex, its Index over the vocabulary and a Guide), median of ``--repeats``;
- ``mask``: each step's allowed-token bit mask (int32 words, one bit per token) along one valid
  document of the schema: mean, p50 and p99 over the steps; then the longest allowed token
  that spells the document's next bytes is accepted (choosing and accepting are not in the
  figure). So each engine walks the same bytes; the steps can differ slightly where an engine
  allows only some tokenizations of forced text (llguidance allows ``"}`` but not ``"},``).
  Compact JSON (no whitespace) in all three. Each engine walks the document ``--repeats``
  times with a fresh matcher; the figures are over all those steps;
- ``request``: what one request with a new schema pays: compile + the first walk's masks.
"""

from __future__ import annotations

import argparse
import json
import lzma
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "tests" / "data" / "tokenizers"
QWEN_SIZE = 151_643

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9]+\\.[a-z]{2,4}$"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
        "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 4},
    },
    "required": ["name", "age", "email", "role", "active", "tags", "address", "scores"],
    "additionalProperties": False,
}
DOCUMENT = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada.lovelace@example.org",
    "role": "editor",
    "active": True,
    "tags": ["math", "engines", "poetry"],
    "address": {"street": "12 St James's Square", "city": "London", "zip": "10001"},
    "scores": [9.5, 8.25, 10],
}


# ----------------------------------------------------------------------------------------
# Tokenizers


def _unpacked(source: Path, folder: Path) -> Path:
    target = folder / f"{source.parent.name}.json"
    target.write_bytes(lzma.decompress(source.read_bytes()))
    return target


def qwen_sized(claude: Path, folder: Path, size: int = QWEN_SIZE, seed: int = 0) -> Path:
    """Claude v1's byte-level BPE extended by merges of its frequent tokens to ``size``
    tokens, plus one special ``<|endoftext|>`` (see the module docstring)."""
    data = json.loads(claude.read_text())
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    specials = {token["content"] for token in data["added_tokens"]}
    common = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials]
    common = common[:20_000]
    rng = np.random.default_rng(seed)
    merges = list(model["merges"])
    while len(vocab) < size:
        left, right = rng.integers(0, len(common), 2).tolist()
        token = common[left] + common[right]
        if token in vocab:
            continue
        vocab[token] = len(vocab)
        merges.append(f"{common[left]} {common[right]}")
    model["merges"] = merges
    eos = {"id": len(vocab), "content": "<|endoftext|>", "special": True, "single_word": False}
    eos.update(lstrip=False, rstrip=False, normalized=False)
    data["added_tokens"].append(eos)
    target = folder / "qwen-sized.json"
    target.write_text(json.dumps(data))
    return target


class Vocab:
    """A tokenizer.json as the engines need it: its text, size, eos, and each token's bytes."""

    def __init__(self, path: Path, name: str) -> None:
        from tokenizers import Tokenizer

        self.name = name
        self.text = path.read_text()
        tokenizer = Tokenizer.from_str(self.text)
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        data = json.loads(self.text)
        specials = [t for t in data.get("added_tokens", []) if t.get("special")]
        names = ("</s>", "<|endoftext|>", "<EOT>", "<|end_of_text|>", "<eos>")
        eos = [t["id"] for t in specials if t["content"] in names] or [specials[0]["id"]]
        self.eos = int(eos[0])
        self.special_ids = {int(t["id"]) for t in specials}
        self.token_bytes = self._token_bytes(data, tokenizer)
        self._by_bytes: dict[bytes, list[int]] = {}
        for token_id, spelled in enumerate(self.token_bytes):
            if token_id not in self.special_ids and spelled:
                self._by_bytes.setdefault(spelled, []).append(token_id)
        self._longest = max(len(b) for b in self._by_bytes)

    def _token_bytes(self, data: dict[str, Any], tokenizer: Any) -> list[bytes]:
        """What each token spells: ByteLevel's alphabet, or Metaspace with <0xNN> fallback."""
        byte_level = "ByteLevel" in json.dumps(data.get("pre_tokenizer"))
        inverse = {c: b for b, c in _bytes_to_unicode().items()}
        result = []
        for token_id in range(self.size):
            token = tokenizer.id_to_token(token_id) or ""
            if token_id in self.special_ids:
                result.append(token.encode())
            elif byte_level:
                result.append(bytes(inverse.get(c, 0) for c in token))
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                result.append(bytes([int(token[3:5], 16)]))
            else:
                result.append(token.replace("\u2581", " ").encode())
        return result

    def next_token(self, rest: bytes, words: np.ndarray, engine: str) -> int:
        """The longest token the mask ``words`` allows that spells a prefix of ``rest``."""
        for size in range(min(self._longest, len(rest)), 0, -1):
            for token in self._by_bytes.get(rest[:size], ()):
                if (int(words[token // 32]) >> (token % 32)) & 1:
                    return token
        raise RuntimeError(f"{engine}: no allowed token spells the document's {rest[:20]!r}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table (ByteLevel BPE)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


# ----------------------------------------------------------------------------------------
# Engines: each returns (setup seconds, compile seconds, per-step mask seconds)


def _median_time(make: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, made = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        made = make()
        times.append(time.perf_counter() - start)
    return statistics.median(times), made


def run_llguidance(vocab: Vocab, document: bytes, repeats: int) -> tuple[float, float, list]:
    import llguidance
    import llguidance.numpy

    start = time.perf_counter()
    tokenizer = llguidance.LLTokenizer(vocab.text, n_vocab=vocab.size, eos_token=vocab.eos)
    setup = time.perf_counter() - start
    options = {"whitespace_flexible": False}

    def make() -> Any:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults=options)
        return llguidance.LLMatcher(tokenizer, grammar, log_level=0)

    compile_s, _ = _median_time(make, repeats)
    bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab.size)
    steps: list[float] = []
    for _ in range(repeats):
        steps += _walk_llguidance(make(), bitmask, vocab, document)
    return setup, compile_s, steps


def _walk_llguidance(matcher: Any, bitmask: np.ndarray, vocab: Vocab, document: bytes) -> list:
    import llguidance.numpy

    steps, at = [], 0
    while at < len(document):
        start = time.perf_counter()
        llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
        steps.append(time.perf_counter() - start)
        token = vocab.next_token(document[at:], bitmask[0], "llguidance")
        at += len(vocab.token_bytes[token])
        if not matcher.consume_token(token):
            raise RuntimeError(f"llguidance refused token {token}: {matcher.get_error()}")
    return steps


def run_xgrammar(vocab: Vocab, document: bytes, repeats: int) -> tuple[float, float, list]:
    import xgrammar

    start = time.perf_counter()
    info = xgrammar.TokenizerInfo(
        vocab.token_bytes,
        xgrammar.VocabType.RAW,
        vocab_size=vocab.size,
        stop_token_ids=[vocab.eos],
    )
    setup = time.perf_counter() - start
    schema = json.dumps(SCHEMA)

    def make() -> Any:
        compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        compiled = compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))
        return xgrammar.GrammarMatcher(compiled)

    compile_s, _ = _median_time(make, repeats)
    bitmask = np.full((1, (vocab.size + 31) // 32), -1, dtype=np.int32)
    steps: list[float] = []
    for _ in range(repeats):
        steps += _walk_xgrammar(make(), bitmask, vocab, document)
    return setup, compile_s, steps


def _walk_xgrammar(matcher: Any, bitmask: np.ndarray, vocab: Vocab, document: bytes) -> list:
    steps, at = [], 0
    while at < len(document):
        start = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask, 0)
        steps.append(time.perf_counter() - start)
        token = vocab.next_token(document[at:], bitmask[0], "xgrammar")
        at += len(vocab.token_bytes[token])
        if not matcher.accept_token(token):
            raise RuntimeError(f"xgrammar refused token {token}")
    return steps


def run_outlines(vocab: Vocab, document: bytes, repeats: int) -> tuple[float, float, list]:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    start = time.perf_counter()
    table: dict[bytes, list[int]] = {}
    for token_id, spelled in enumerate(vocab.token_bytes):
        if token_id != vocab.eos and token_id not in vocab.special_ids and spelled:
            table.setdefault(spelled, []).append(token_id)
    vocabulary = outlines_core.Vocabulary(vocab.eos, table)
    setup = time.perf_counter() - start

    def make() -> Any:
        regex = build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern="")
        return outlines_core.Guide(outlines_core.Index(regex, vocabulary))

    compile_s, guide = _median_time(make, repeats)
    bitmask = np.full((1, (vocab.size + 31) // 32), -1, dtype=np.int32)
    steps: list[float] = []
    for _ in range(repeats):
        guide.reset()
        steps += _walk_outlines(guide, bitmask, vocab, document)
    return setup, compile_s, steps


def _walk_outlines(guide: Any, bitmask: np.ndarray, vocab: Vocab, document: bytes) -> list:
    steps, at = [], 0
    while at < len(document):
        start = time.perf_counter()
        guide.write_mask_into(bitmask.ctypes.data, bitmask.size, bitmask.itemsize)
        steps.append(time.perf_counter() - start)
        token = vocab.next_token(document[at:], bitmask[0], "outlines-core")
        at += len(vocab.token_bytes[token])
        guide.advance(token, return_tokens=False)
    return steps


ENGINES = {"llguidance": run_llguidance, "xgrammar": run_xgrammar, "outlines-core": run_outlines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="compiles and document walks per engine"
    )
    parser.add_argument("--tokenizer", action="append", default=[], metavar="FILE")
    args = parser.parse_args(argv)
    document = json.dumps(DOCUMENT, separators=(",", ":")).encode()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        files = [
            ("32k", _unpacked(TOKENIZERS / "mistral-7b-v0.1" / "tokenizer.json.xz", work)),
            (
                "152k",
                qwen_sized(_unpacked(TOKENIZERS / "claude-v1" / "tokenizer.json.xz", work), work),
            ),
        ]
        files += [(Path(f).stem, Path(f)) for f in args.tokenizer]
        for label, path in files:
            vocab = Vocab(path, label)
            for engine, run in ENGINES.items():
                try:
                    setup, compile_s, steps = run(vocab, document, args.repeats)
                except ImportError as err:
                    print(f"{engine}: not installed ({err.name}); skipped", file=sys.stderr)
                    continue
                us = np.asarray(steps) * 1e6
                walk = len(steps) // args.repeats
                rows.append(
                    (
                        f"{label} ({vocab.size:,})",
                        engine,
                        f"{setup * 1e3:,.0f}",
                        f"{compile_s * 1e3:,.1f}",
                        f"{us.mean():,.0f}",
                        f"{np.percentile(us, 50):,.0f}",
                        f"{np.percentile(us, 99):,.0f}",
                        f"{us.max():,.0f}",
                        str(walk),
                        f"{compile_s * 1e3 + us[:walk].sum() / 1e3:,.1f}",
                    )
                )
                print(f"{label} {engine}: done", file=sys.stderr)
    header = (
        "vocabulary",
        "engine",
        "setup ms",
        "compile ms",
        "mask us mean",
        "p50",
        "p99",
        "max",
        "steps",
        "request ms",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
