"""Loading specs: YAML text or a file in, a validated :class:`ModelSpec` or one located
:class:`SpecError` out. Nothing else ever escapes for a bad spec."""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from pathlib import Path as FilePath
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from llmspec.errors import Path, Problem, SpecError
from llmspec.spec.rules import cross_field_problems
from llmspec.spec.sections import ModelSpec
from llmspec.spec.yaml_safe import MAX_BYTES, Located, load_yaml
from runtime.reading import UnreadableFile, check_regular, read_bytes

SPEC_SUFFIXES = (".yaml", ".yml")


def _did_you_mean(word: object, options: list[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fields_of(annotation: Any) -> dict[str, Any] | None:
    """Field name -> annotation for a pydantic model or a dataclass, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: f.annotation for name, f in annotation.model_fields.items()}
    fields = getattr(annotation, "__dataclass_fields__", None)
    if fields is not None:
        hints = typing.get_type_hints(annotation)
        return {name: hints[name] for name in fields}
    return None


def _union_members(annotation: Any) -> list[Any]:
    """The members of a union other than None; an optional discriminated union
    (``Annotated[A | B, Field(discriminator=...)] | None``, rope's scaling) gives A and B."""
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members: list[Any] = []
        for member in get_args(annotation):
            if member is not type(None):
                members += _union_members(member) or [member]
        return members
    return []


def _tags(members: list[Any]) -> dict[str, Any]:
    """Tag -> class for the members of a discriminated union (those with a literal ``type``)."""
    out: dict[str, Any] = {}
    for member in members:
        fields = _fields_of(member)
        if fields and "type" in fields:
            for tag in get_args(_strip(fields["type"])):
                out[tag] = member
    return out


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _model_of(annotation: Any) -> Any:
    """The one type behind ``Annotated[...]`` and ``X | None`` (``generation`` is optional)."""
    members = _union_members(annotation)
    return _strip(members[0]) if len(members) == 1 else _strip(annotation)


def _walk(loc: tuple[Any, ...]) -> tuple[Path, list[Any]]:
    """Follow a pydantic error location through the spec's types.

    Returns the path as the user wrote it (discriminator tags removed) and the chain of
    annotations met along it (the last is the annotation at the error)."""
    annotation: Any = ModelSpec
    path: list[str | int] = []
    seen: list[Any] = [annotation]
    for part in loc:
        bare = _strip(annotation)
        members = _union_members(bare)
        tagged = _tags(members)
        if tagged and isinstance(part, str) and part in tagged:
            annotation = tagged[part]
            seen.append(annotation)
            continue
        if len(members) == 1:
            bare = _strip(members[0])
        if get_origin(bare) is list and isinstance(part, int):
            annotation = get_args(bare)[0]
        else:
            fields = _fields_of(bare)
            annotation = fields.get(part) if fields and isinstance(part, str) else None
        path.append(part)
        seen.append(annotation)
    return tuple(path), seen


def _literal_values(annotation: Any) -> list[str]:
    annotation = _strip(annotation)
    for member in [annotation, *_union_members(annotation)]:
        member = _strip(member)
        if get_origin(member) is typing.Literal:
            return [str(v) for v in get_args(member)]
    return []


_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _problem_for(error: Any, located: Located) -> Problem:
    kind = error["type"]
    path, seen = _walk(tuple(error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    given = error.get("input")
    key_position = False

    if kind == "missing":
        message = f"required field missing; add '{path[-1]}: ...'"
        line, column = located.position(path[:-1])
        return Problem(located.source, line, column, path, message)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = _fields_of(_model_of(seen[-2])) if len(seen) >= 2 else None
        options = sorted(parent) if parent else []
        hint = _did_you_mean(path[-1], options)
        message = f"unknown key {path[-1]!r}{hint}" + (
            f" (known keys: {', '.join(options)})" if not hint and options else ""
        )
        key_position = True
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = sorted(_tags(_union_members(seen[-1])))
        if kind == "union_tag_not_found":
            message = f"missing 'type'; choose one of: {', '.join(tags)}"
        else:
            tag = error.get("ctx", {}).get("tag")
            written = given.get("type", tag) if isinstance(given, dict) else tag
            if isinstance(written, str):
                message = f"unknown type {tag!r}{_did_you_mean(tag, tags)}"
            else:  # pydantic reports str() of the value: don't present a list as a name
                message = f"expected a type name, got {_describe(written)}"
            message += f" (choose one of: {', '.join(tags)})"
            path = (*path, "type")
    elif kind == "literal_error":
        options = _literal_values(seen[-1])
        hint = _did_you_mean(given, options)
        shown = repr(given) if isinstance(given, str) else _describe(given)
        message = f"{shown} is not one of: {', '.join(options)}{hint}"
    elif kind in ("model_type", "dataclass_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping of keys to values, got {_describe(given)}"
        if isinstance(given, str) and given in _tags(_union_members(seen[-1])):
            message += f"; write {{type: {given}}}"
    elif kind == "list_type":
        message = f"expected a list, got {_describe(given)}"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"expected true or false, got {_describe(given)}"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"expected a whole number, got {_describe(given)}"
    elif kind in ("float_type", "float_parsing"):
        message = f"expected a number, got {_describe(given)}"
    elif kind == "finite_number":
        message = f"expected a finite number, got {given!r}"
    elif kind in ("string_type",):
        message = f"expected text, got {_describe(given)}"
    elif kind in _RANGE_ERRORS:
        message = f"{message.replace('Input should be', 'must be')}, got {_describe(given)}"
    elif kind == "string_pattern_mismatch" and path == ("name",):
        message = (
            f"{given!r} is not a valid name: use lowercase letters, digits, '-' and '_', "
            "starting with a letter (e.g. 'tiny-decoder')"
        )
    line, column = located.position(path, key=key_position)
    return Problem(located.source, line, column, path, message)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value!r}" + (
            " (quote-free yes/no/on/off are text; use true/false)"
            if value.lower() in ("yes", "no", "on", "off", "y", "n")
            else ""
        )
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _valid_sections(data: dict[str, Any], failed: set[str]) -> tuple[Any, frozenset[str]]:
    """Validate each top-level field that had no error on its own, for the cross-field rules."""
    values: dict[str, Any] = {}
    for name, field in ModelSpec.model_fields.items():
        if name in failed:
            continue
        if name in data:
            try:
                # Each section's own config decides strictness (generation is lax); a
                # top-level scalar that is wrong in strict mode already failed above.
                values[name] = _adapter(name, field).validate_python(data[name])
            except ValidationError:
                continue
        elif not field.is_required():
            values[name] = field.get_default(call_default_factory=True)
    return types.SimpleNamespace(**values), frozenset(values)


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _adapter(name: str, field: FieldInfo) -> TypeAdapter[Any]:
    if name not in _ADAPTERS:
        annotated: Any = typing.Annotated[field.annotation, field]
        _ADAPTERS[name] = TypeAdapter(annotated)
    return _ADAPTERS[name]


def validate(located: Located) -> ModelSpec:
    """Validate loaded YAML data; raise one :class:`SpecError` listing every problem."""
    data = located.data
    if not isinstance(data, dict):
        what = "an empty file" if data is None else _describe(data)
        raise SpecError(
            [
                Problem(
                    located.source,
                    *located.position(()),
                    (),
                    f"a spec is a mapping of sections (name:, architecture:, ...), got {what}",
                )
            ]
        )
    problems: list[Problem] = []
    try:
        spec = ModelSpec.model_validate(data, context={"skip_rules": True})
        namespace: Any = spec
        valid: frozenset[str] | None = None
    except ValidationError as err:
        errors = err.errors(include_url=False)
        problems.extend(_problem_for(e, located) for e in errors)
        failed = {str(e["loc"][0]) for e in errors if e["loc"]}
        namespace, valid = _valid_sections(data, failed)
        spec = None
    for path, message in cross_field_problems(namespace, valid):
        line, column = located.position(path)
        problems.append(Problem(located.source, line, column, path, message))
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def _is_file(text: str) -> bool:
    try:
        return FilePath(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _read(source: str | bytes | FilePath) -> tuple[str | bytes, str]:
    """(text, name for messages) of a spec given as a path or as YAML text (str or bytes)."""
    if isinstance(source, bytes):
        return source, "<string>"
    is_path = isinstance(source, FilePath) or (
        "\n" not in source and (source.endswith(SPEC_SUFFIXES) or _is_file(source))
    )
    if not is_path:
        return str(source), "<string>"
    path = FilePath(source)
    name = str(path)
    try:
        size = check_regular(path)  # a FIFO, a device or a directory: refused without reading
        if size > MAX_BYTES:
            message = f"the file is {size} bytes; specs are capped at {MAX_BYTES}"
            raise SpecError([Problem(name, 0, 0, (), message)])
        # Bounded whatever the size said (a file in /proc says 0, a file may grow meanwhile).
        return read_bytes(path, MAX_BYTES, "spec"), name
    except UnreadableFile as err:
        # The reader's message starts with the file name; the Problem carries it already.
        message = str(err).removeprefix(f"{name}: ")
        raise SpecError([Problem(name, 0, 0, (), message)]) from None


def load_spec(source: str | bytes | FilePath) -> ModelSpec:
    """Load and validate a spec.

    ``source`` is a :class:`pathlib.Path`, a path string (one line, naming an existing file or
    ending in .yaml/.yml), or the YAML text itself (``bytes`` must be UTF-8). Raises
    :class:`SpecError` listing every problem as ``file:line:col: field.path: message``.
    """
    text, name = _read(source)
    return validate(load_yaml(text, name))


def dump_spec(spec: ModelSpec) -> str:
    """The normalized spec as YAML: every field, defaults filled in, in schema order."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def spec_sha256(spec: ModelSpec) -> str:
    """A digest of the normalized spec: equal for specs that describe the same model."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
