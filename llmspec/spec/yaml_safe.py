"""Safe YAML loading that remembers where every value came from.

Specs are small, reviewed files, so the loader is deliberately strict:

* only plain data: mappings, sequences and scalars; any explicit tag (``!!python/...``,
  ``!!str``, custom tags) is rejected rather than interpreted;
* anchors and aliases are rejected, so alias bombs ("billion laughs") fail at the first
  anchor, before anything is expanded;
* duplicate keys are rejected (YAML says the last one wins silently);
* a size cap (:data:`MAX_BYTES`), a nesting cap (:data:`MAX_DEPTH`) and an integer cap
  (64 bits: sizes and counts never need more, and huge ones overflow the float arithmetic of
  the cross-field rules);
* one document per file;
* plain scalars are resolved with the YAML 1.2 core schema, not PyYAML's YAML 1.1 one: only
  ``true``/``false`` are booleans (``no``, ``on``, ``yes``, ``off`` stay strings, so
  ``name: no`` is the string "no"), and ``1e5``/``1e-5`` are numbers (YAML 1.1 reads them as
  strings). Quoted scalars are always strings.

The result is the data plus a map from each path (``("attention", "heads")``) to the
1-based line and column of the value, and of the key for mapping entries.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from llmspec.errors import Path, Problem, SpecError

MAX_BYTES = 1 << 20  # a spec is a page of text; 1 MiB is far beyond any real one
MAX_DEPTH = 32
MAX_INT = 1 << 63  # sizes and counts; a bigger integer is a typo (and overflows floats and ONNX)

_INT = re.compile(r"[-+]?[0-9]+$")
_OCT = re.compile(r"0o[0-7]+$")
_HEX = re.compile(r"0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)$")
_NAN = re.compile(r"\.(nan|NaN|NAN)$")


def resolve_plain(text: str) -> Any:
    """Resolve an unquoted scalar with the YAML 1.2 core schema."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT.match(text):
        return _integer(text, 10)
    if _OCT.match(text):
        return _integer(text[2:], 8)
    if _HEX.match(text):
        return _integer(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


def _integer(digits: str, base: int) -> int:
    """``int(digits, base)``, or OverflowError beyond 64 bits (checked on the length first, so
    that a 5000-digit number costs nothing and never meets Python's int-from-text limit)."""
    if len(digits.lstrip("+-0")) > 64:
        raise OverflowError(digits)
    value = int(digits, base)
    if not -MAX_INT <= value < MAX_INT:
        raise OverflowError(digits)
    return value


@dataclass
class Located:
    """Loaded YAML data and where each of its values stands in the source."""

    data: Any
    source: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The place of ``path`` (its key, if asked and known), else of its nearest ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            if path[:end] in self.values:
                return self.values[path[:end]]
        return (0, 0)


def _mark(event: yaml.Event) -> tuple[int, int]:
    mark = event.start_mark
    if mark is None:
        return (0, 0)
    return (mark.line + 1, mark.column + 1)


class _Builder:
    """Builds plain Python data from a YAML event stream, checking the rules above."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.located = Located(data=None, source=source)
        self.problems: list[Problem] = []

    def fail(self, event: yaml.Event, path: Path, message: str) -> SpecError:
        line, column = _mark(event)
        if path and path[-1] == "<key>":  # a bad key is reported at its mapping
            path = path[:-1]
        return SpecError([Problem(self.source, line, column, path, message)])

    def check_node(self, event: yaml.Event, path: Path, depth: int) -> None:
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent) or anchor is not None:
            raise self.fail(
                event,
                path,
                "anchors and aliases (&name, *name) are not allowed in a spec; "
                "write the value out in full",
            )
        # The parser gives a node a tag only when the text writes one (the non-specific '!'
        # included, which PyYAML marks implicit and would resolve as if it were absent).
        tag = getattr(event, "tag", None)
        if tag is not None:
            raise self.fail(
                event,
                path,
                f"the YAML tag {tag!r} is not allowed in a spec; specs hold plain "
                "mappings, lists, strings, numbers and booleans",
            )
        if depth > MAX_DEPTH:
            raise self.fail(
                event, path, f"nesting deeper than {MAX_DEPTH} levels; a spec is never this deep"
            )

    def node(self, events: Any, first: yaml.Event, path: Path, depth: int) -> Any:
        self.check_node(first, path, depth)
        if not path or path[-1] != "<key>":
            self.located.values[path] = _mark(first)
        if isinstance(first, yaml.ScalarEvent):
            if first.style is None:
                try:
                    return resolve_plain(first.value)
                except OverflowError:
                    text = first.value if len(first.value) <= 24 else first.value[:20] + "..."
                    raise self.fail(
                        first,
                        path,
                        f"the integer {text} is out of range; spec integers fit in 64 bits",
                    ) from None
            return first.value
        if isinstance(first, yaml.SequenceStartEvent):
            items: list[Any] = []
            for event in events:
                if isinstance(event, yaml.SequenceEndEvent):
                    return items
                items.append(self.node(events, event, (*path, len(items)), depth + 1))
        if isinstance(first, yaml.MappingStartEvent):
            mapping: dict[str, Any] = {}
            for event in events:
                if isinstance(event, yaml.MappingEndEvent):
                    return mapping
                key = self.node(events, event, (*path, "<key>"), depth + 1)
                if not isinstance(key, str):
                    raise self.fail(event, path, f"mapping keys must be plain words, not {key!r}")
                if key in mapping:
                    line, _ = self.located.keys[(*path, key)]
                    raise self.fail(
                        event,
                        (*path, key),
                        f"duplicate key {key!r} (first given on line {line}); keep one",
                    )
                self.located.keys[(*path, key)] = _mark(event)
                value_event = next(events)
                mapping[key] = self.node(events, value_event, (*path, key), depth + 1)
        raise self.fail(first, path, "unexpected YAML structure")  # pragma: no cover

    def build(self, text: str) -> Located:
        events = iter(yaml.parse(text, Loader=yaml.SafeLoader))
        documents = 0
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self.fail(
                        event, (), "a spec file holds one YAML document; remove the extra '---'"
                    )
                value_event = next(events)
                if isinstance(value_event, yaml.DocumentEndEvent):
                    continue
                self.located.data = self.node(events, value_event, (), 1)
        return self.located


def load_yaml(text: str | bytes, source: str = "<string>") -> Located:
    """Parse spec text safely; raise a located :class:`SpecError` on anything unsafe."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise SpecError(
            [
                Problem(
                    source,
                    0,
                    0,
                    (),
                    f"the file is {size} bytes; specs are capped at {MAX_BYTES} bytes",
                )
            ]
        )
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
            message = f"not UTF-8 text (byte {err.start}); save it as UTF-8"
            raise SpecError([Problem(source, line, column, (), message)]) from None
    builder = _Builder(source)
    try:
        return builder.build(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = str(err.problem or "")
        context = err.context_mark
        if err.context and context and context is not mark:
            # Where the unfinished construct began is often the real culprit (an unclosed
            # '{' or quote); the problem mark is where the parser gave up.
            message = (
                f"{err.context} started on line {context.line + 1}, column "
                f"{context.column + 1}: {message}"
            )
        elif err.context:
            message = f"{err.context}: {message}"
        if "'\\t'" in message:
            message += "; indent with spaces"
        raise SpecError([Problem(source, line, column, (), f"invalid YAML: {message}")]) from None
    except yaml.reader.ReaderError as err:
        # A character YAML forbids (NUL, most control characters); the reader knows where.
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        message = f"invalid YAML: the character U+{code:04X} is not allowed; remove it"
        raise SpecError([Problem(source, line, column, (), message)]) from None
    except yaml.YAMLError as err:
        raise SpecError([Problem(source, 0, 0, (), f"invalid YAML: {err}")]) from None
    except RecursionError:
        raise SpecError(
            [Problem(source, 0, 0, (), f"nesting deeper than {MAX_DEPTH} levels")]
        ) from None
