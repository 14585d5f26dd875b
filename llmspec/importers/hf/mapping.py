# The tables keep one mapping a line, however long its names.
# ruff: noqa: E501
"""What a weight table is, and the two directions that read one: Hugging Face names to ours and back.

A table maps the Hugging Face model's parameter names to the generated model's, ``{}`` standing
for the layer number (the first number in a name)::

    "h.{}.ln_1.weight": "decoder.layers.{}.self_attn_norm.weight",

Hugging Face names are the base model's (``GPT2Model``'s ``h.{}.ln_1.weight``); a model with a
head puts ``prefix`` before them (``GPT2LMHeadModel``'s ``transformer.h.{}.ln_1.weight``),
except on the names in ``unprefixed`` (its head's). What is not a rename is a :class:`Rule` with
a named :class:`Transform` beside the name: GPT-2's Conv1D stores ``[in, out]``
(:data:`CONV1D`), its ``c_attn`` fuses q, k and v (:data:`FUSED_QKV_CONV1D`, :data:`FUSED_QKV`),
BART's ``final_logits_bias`` is one row (:data:`ROW`). Every transform has its inverse, so
:func:`from_hf` imports with a table and :func:`to_hf` converts back with the same one.

Besides its names a table lists, explicitly, the Hugging Face tensors that are not ours:

* ``head``: the output projection. The importing family decides whether it is tied (see
  :mod:`llmspec.importers.hf.families`); a separate one is our ``lm_head.weight``, and :func:`to_hf` writes
  a tied one as the embeddings, as the headed model's ``state_dict()`` has it.
* ``ties``: names holding a copy of another name's tensor (T5's and BART's per-stack
  ``embed_tokens``, BERT's decoder bias). Importing checks that the copy is equal;
  :func:`to_hf` writes the copy again (``save_pretrained`` leaves it out).
* ``unused``: buffers and stale tensors that older checkpoints carry and transformers derives
  from the config or ignores (GPT-2's causal mask ``h.{}.attn.bias``, Llama's ``inv_freq``).
  Importing skips them; :func:`to_hf` does not write them.
* :data:`LEGACY_NORM_NAMES`: old checkpoints (TF-converted BERT) call a norm's weight and bias
  ``gamma`` and ``beta``; importing accepts those names, :func:`to_hf` writes the current ones.

Parts: a rule tagged with a ``part`` is imported only when its part is on. A part in the
table's ``optional`` is on when the weights have its first name (BERT's pooler, BART's
``final_logits_bias``); any other part is a switch the family sets from the config (Llama's
``attention_bias``). :func:`to_hf` writes whatever parts our tensors have.

The tables themselves, one per family, are in :mod:`llmspec.importers.hf.tables`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from llmspec.errors import LlmspecError

__all__ = [
    "CONV1D",
    "FUSED_QKV",
    "FUSED_QKV_CONV1D",
    "LEGACY_NORM_NAMES",
    "RENAME",
    "ROW",
    "HFExportError",
    "HFImportError",
    "Rule",
    "Transform",
    "WeightTable",
    "Weights",
    "from_hf",
    "layer_pattern",
    "to_hf",
]

HEAD = "lm_head.weight"  # our name for a separate output projection
EMBEDDINGS = "embed_tokens.weight"
LEGACY_NORM_NAMES = {".weight": ".gamma", ".bias": ".beta"}


class HFImportError(ValueError, LlmspecError):
    """A Hugging Face directory that cannot be imported faithfully; the message says why."""


class HFExportError(ValueError, LlmspecError):
    """Tensors that do not make a Hugging Face state dict; the message names the tensor."""


class Weights:
    """The source tensors by (prefix-stripped) name; each is taken at most once, so that the
    ones no rule took can be reported."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        self.tensors = tensors
        self.where = where
        self.taken: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise HFImportError(
                f"{self.where}: missing weight {key!r}; the config describes a model the "
                "weights do not match"
            )
        self.taken.add(key)
        return self.tensors[key]

    def take_if(self, key: str) -> torch.Tensor | None:
        return self.take(key) if key in self.tensors else None

    def ignore(self, keys: Iterable[str]) -> None:
        self.taken.update(k for k in keys if k in self.tensors)

    def left(self) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.taken)


# ----------------------------------------------------------------------------------------
# Transforms: what is not a rename, in both directions


@dataclass(frozen=True)
class Transform:
    """One Hugging Face tensor to our tensors (``to_ours``) and back (``to_hf``); ``rank`` is
    the number of dimensions the Hugging Face tensor must have (None: any)."""

    name: str
    to_ours: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    to_hf: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
    rank: int | None = None


def _same(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (tensor,)


def _only(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tensors[0]


def _transposed(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (tensor.t().contiguous(),)


def _transposed_back(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tensors[0].t().contiguous()


def _split_conv1d(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(part.clone() for part in tensor.t().tensor_split(3, dim=0))


def _join_conv1d(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat(tensors, dim=0).t().contiguous()


def _split(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(part.clone() for part in tensor.tensor_split(3, dim=0))


def joined(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


def _flattened(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (tensor.reshape(-1),)


def _row(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tensors[0].reshape(1, -1)


RENAME = Transform("rename", _same, _only)
# transformers' Conv1D (GPT-2) keeps its weight as [in, out]; a Linear's is [out, in]
CONV1D = Transform("Conv1D transpose", _transposed, _transposed_back, rank=2)
# GPT-2's c_attn: q, k and v side by side in one Conv1D ([in, 3 * out]) and its bias
FUSED_QKV_CONV1D = Transform("fused q, k, v Conv1D split", _split_conv1d, _join_conv1d, rank=2)
FUSED_QKV = Transform("fused q, k, v bias split", _split, joined, rank=1)
# BART's final_logits_bias is a [1, vocab] buffer; our logits bias is [vocab]. Any rank is
# flattened, as the import always did; the vocabulary's size is checked with the other shapes.
ROW = Transform("one-row reshape", _flattened, _row)


@dataclass(frozen=True)
class Rule:
    """Where one Hugging Face tensor goes: our name, or several names that ``transform``
    splits it into; imported only when ``part`` (if any) is on."""

    ours: str | tuple[str, ...]
    transform: Transform = RENAME
    part: str | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.ours,) if isinstance(self.ours, str) else self.ours

    @property
    def stack(self) -> str | None:
        """The stack whose layer count ``{}`` runs over (``encoder``/``decoder``), if any."""
        first = self.targets[0]
        return first.split(".", 1)[0] if "{}" in first else None

    @property
    def is_norm(self) -> bool:
        """Whether the target is a norm's parameter (which may have a legacy name)."""
        return self.targets[0].rsplit(".", 1)[0].endswith("norm")


def layer_pattern(name: str) -> str:
    """``name`` with its first number, the layer number, replaced by ``{}``."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "{}", name, count=1)


def _layer_number(name: str) -> int:
    found = re.search(r"(?<=\.)\d+(?=\.)", name)
    assert found is not None
    return int(found.group())


@dataclass(frozen=True)
class WeightTable:
    """One family's weight names (see the module docstring)."""

    family: str
    names: Mapping[str, str | Rule]
    head: str
    ties: Mapping[str, str] = field(default_factory=dict)
    unused: Mapping[str, str] = field(default_factory=dict)  # name -> why it is not a weight
    prefix: str = ""
    unprefixed: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        targets = [t for rule in self.rules.values() for t in rule.targets]
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated or HEAD in targets:
            raise ValueError(f"{self.family} table: {repeated or HEAD} mapped more than once")
        for name, rule in self.rules.items():
            if ("{}" in name) != (rule.stack is not None):
                raise ValueError(f"{self.family} table: {name} and {rule.ours} differ in layers")
        clashes = (set(self.ties) | set(self.unused) | {self.head}) & set(self.rules)
        if clashes:
            raise ValueError(f"{self.family} table: {sorted(clashes)} listed twice")

    @property
    def rules(self) -> dict[str, Rule]:
        return {n: r if isinstance(r, Rule) else Rule(r) for n, r in self.names.items()}

    def inverse(self) -> dict[str, tuple[str, Rule]]:
        """Our name pattern -> (the Hugging Face name pattern, its rule)."""
        return {ours: (name, rule) for name, rule in self.rules.items() for ours in rule.targets}


# ----------------------------------------------------------------------------------------
# The two directions


def _strip_prefix(weights: Weights, prefix: str, keep: Iterable[str]) -> None:
    """Drop a base-model prefix (``bert.``, ``model.``...), so bare and headed models read alike."""
    kept = tuple(keep)
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in weights.tensors.items():
        if prefix and key.startswith(prefix) and not key.startswith(kept):
            key = key[len(prefix) :]
        if key in renamed:
            raise HFImportError(f"{weights.where}: weight {key!r} appears twice")
        renamed[key] = tensor
    weights.tensors = renamed


def _convert(weights: Weights, out: dict[str, torch.Tensor], name: str, rule: Rule, i: int) -> None:
    key = name.format(i)
    if rule.is_norm and not weights.has(key):
        for current, legacy in LEGACY_NORM_NAMES.items():
            if key.endswith(current) and weights.has(key.removesuffix(current) + legacy):
                key = key.removesuffix(current) + legacy
    tensor = weights.take(key)
    rank = rule.transform.rank
    if rank is not None and tensor.dim() != rank:
        raise HFImportError(
            f"{weights.where}: {key} has shape {list(tensor.shape)}; the {rule.transform.name} "
            f"needs a {rank}-dimensional tensor"
        )
    converted = rule.transform.to_ours(tensor)
    for target, value in zip(rule.targets, converted, strict=True):
        out[target.format(i)] = value


def from_hf(
    weights: Weights,
    table: WeightTable,
    layers: Mapping[str, int],
    switches: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """Our tensors for ``weights`` by ``table``; ``layers`` gives each stack's layer count and
    ``switches`` the parts the config turns on.

    Takes every tensor a rule names (:class:`HFImportError` naming a missing one), checks the
    ``ties``, and marks the ``unused`` as seen. The head and anything no rule names are left in
    ``weights`` for the family and the caller (``weights.left()``)."""
    _strip_prefix(weights, table.prefix, table.unprefixed)
    weights.ignore(
        k for k in weights.tensors if k in table.unused or layer_pattern(k) in table.unused
    )
    rules = table.rules
    parts = set(switches) | {
        part
        for part in table.optional
        if weights.has(next(n for n, r in rules.items() if r.part == part).format(0))
    }
    chosen = {n: r for n, r in rules.items() if r.part is None or r.part in parts}
    out: dict[str, torch.Tensor] = {}
    stacks_done: set[str] = set()
    for name, rule in chosen.items():
        stack = rule.stack
        if stack is None:
            _convert(weights, out, name, rule, 0)
        elif stack not in stacks_done:  # layer by layer, in the table's order within a layer
            stacks_done.add(stack)
            layer_rules = {n: r for n, r in chosen.items() if r.stack == stack}
            for i in range(layers[stack]):
                for layer_name, layer_rule in layer_rules.items():
                    _convert(weights, out, layer_name, layer_rule, i)
    for copy, source in table.ties.items():
        if source not in weights.taken:
            continue
        reference = weights.tensors[source]
        tensor = weights.take_if(copy)
        if tensor is not None and not (
            tensor.shape == reference.shape and torch.equal(tensor, reference)
        ):
            raise HFImportError(
                f"{weights.where}: {copy!r} differs from {source}; the spec shares one"
            )
    return out


def to_hf(
    tensors: Mapping[str, torch.Tensor], table: WeightTable, *, headed: bool = True
) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict for our ``tensors`` by ``table``: the inverse of
    :func:`from_hf`. With ``headed``, names are those of the model with a head (``prefix``
    added, a tied head written as the embeddings); without, the base model's. Tied copies
    (``ties``) are written as the model's ``state_dict()`` has them; ``unused`` tensors are not.

    Raises :class:`HFExportError` naming a tensor the table has no name for, or one whose
    fused partners are missing."""
    inverse = table.inverse()
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for key in tensors:
        if key in done:
            continue
        if key == HEAD:
            out[table.head] = tensors[key]
            continue
        pattern = key if key in inverse else layer_pattern(key)
        if pattern not in inverse or ("{}" in pattern) == (pattern == key):
            raise HFExportError(f"{key}: the {table.family} table has no Hugging Face name for it")
        name, rule = inverse[pattern]
        i = _layer_number(key) if "{}" in pattern else 0
        targets = [t.format(i) for t in rule.targets]
        missing = [t for t in targets if t not in tensors]
        if missing:
            raise HFExportError(f"{missing[0]}: missing; {name.format(i)} is made of {targets}")
        done.update(targets)
        out[name.format(i)] = rule.transform.to_hf(tuple(tensors[t] for t in targets))
    if headed and table.head not in out and EMBEDDINGS in tensors:
        embedding_name = inverse[EMBEDDINGS][0]
        out[table.head] = out[embedding_name]
    for copy, source in table.ties.items():
        if source in out:
            out[copy] = out[source]
    if not headed:
        return out
    return {
        key if key.startswith(table.unprefixed) else table.prefix + key: tensor
        for key, tensor in out.items()
    }
