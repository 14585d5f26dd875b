"""Building the PyTorch model of a spec.

``build(spec)`` lowers the spec to a render plan, generates the model's source (the same file
``llmspec codegen`` writes), imports it (cached by the source's sha256, see
:mod:`codegen.loader`) and instantiates its model class::

    import llmspec

    model = llmspec.build("specs/tiny-decoder.yaml")           # initialized, spec's dtype
    model = llmspec.build(spec, dtype="fp32", weights="weights.safetensors")

The module's weights follow DESIGN.md's naming contract (``embed_tokens.weight``,
``decoder.layers.0.self_attn.q_proj.weight``, ...), so ``model.state_dict()`` and a
``weights.safetensors`` file use the same names.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codegen.loader import load_source
from codegen.render import render
from llmspec.errors import LlmspecError
from llmspec.estimates.counts import count_parameters
from llmspec.estimates.memory import build_bytes, shortfall
from llmspec.estimates.units import human_bytes, human_count
from llmspec.lower import lower
from llmspec.spec.loading import load_spec, spec_sha256
from llmspec.spec.sections import ModelSpec
from runtime.memory import MachineMemory, machine_memory

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

SpecLike = ModelSpec | str | os.PathLike[str]
DTypeLike = torch.dtype | str
Weights = str | os.PathLike[str] | Mapping[str, torch.Tensor]
# The seed of a model's initial weights when no weights are given: an export of a bare spec
# and the attention maps of one draw the same model.
INIT_SEED = 0

_SOURCES: dict[str, str] = {}
_SOURCES_LOCK = threading.Lock()


class WeightsError(ValueError, LlmspecError):
    """Weights that do not fit the model: names missing or unexpected, or shapes that differ."""


class ModelTooLarge(WeightsError):
    """A model whose weights would not fit in the memory of the device it is built on, found
    from the spec before anything is allocated. (A WeightsError, so that every verb that
    builds a model reports it as it reports weights that do not fit.)"""


def device_memory(device: torch.device | str | None = None) -> MachineMemory | None:
    """Free and total memory of ``device`` (default: torch's default device): a CUDA device's
    as torch reports it, otherwise this machine's (see
    :func:`runtime.memory.machine_memory`);
    None where unknown."""
    where = torch.device(device) if device is not None else torch.get_default_device()
    if where.type == "cuda":
        try:
            free, total = torch.cuda.mem_get_info(where)
        except (RuntimeError, AssertionError):  # no driver, or CUDA not compiled in
            return None
        return MachineMemory(free, total, str(where))
    if where.type == "cpu":
        return machine_memory()
    return None  # meta (counting without memory) and devices we do not know


def check_memory(
    spec: ModelSpec,
    need: int,
    what: str,
    device: torch.device | str | None = None,
) -> None:
    """Raise :class:`ModelTooLarge` when ``need`` bytes (from :mod:`llmspec.estimates.memory`)
    exceed
    what ``device`` has available; ``what`` says what they are for ("building it in fp32")."""
    why = shortfall(need, device_memory(device))
    if why is not None:
        raise ModelTooLarge(
            f"{spec.name} has {human_count(count_parameters(spec).total)} parameters: "
            f"{what} needs at least {human_bytes(need)}, and {why}; make the model smaller "
            "(layers, d_model, d_ff, vocabulary.size) or use a machine with more memory "
            "(llmspec estimate shows where the memory goes)"
        )


def _as_spec(spec: SpecLike) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    return load_spec(Path(spec))


def generate_source(spec: SpecLike) -> str:
    """The formatted, standalone PyTorch source of ``spec``'s model (what ``llmspec codegen``
    writes). Deterministic: the same spec gives the same bytes."""
    spec = _as_spec(spec)
    key = spec_sha256(spec)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
    if source is None:
        source = render(lower(spec))
        with _SOURCES_LOCK:
            _SOURCES[key] = source
    return source


def load_module(spec: SpecLike) -> types.ModuleType:
    """The imported generated module of ``spec`` (one module object per distinct source)."""
    return load_source(generate_source(spec))


def model_classes(spec: SpecLike) -> tuple[type[nn.Module], type[Any]]:
    """(model class, config class) of ``spec``'s generated module."""
    spec = _as_spec(spec)
    plan = lower(spec)
    module = load_module(spec)
    return getattr(module, plan.model_class), getattr(module, f"{plan.prefix}Config")


def _torch_dtype(dtype: DTypeLike) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one of torch.float32, float16, bfloat16")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _read_weights(weights: Weights) -> tuple[dict[str, torch.Tensor], bool]:
    """(name -> tensor, whether the tensors are the caller's own and must be copied)."""
    if isinstance(weights, Mapping):
        tensors = dict(weights)
        bad = sorted(name for name, value in tensors.items() if not isinstance(value, torch.Tensor))
        if bad:
            raise WeightsError(f"weights must be tensors; not tensors: {', '.join(bad)}")
        return tensors, True
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path), False
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file: {err}") from err


def _check_weights(
    spec: ModelSpec, expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{name} (expected {list(expected[name].shape)}, got {list(tensors[name].shape)})"
        for name in sorted(set(expected) & set(tensors))
        if expected[name].shape != tensors[name].shape
    ]
    not_float = sorted(
        name for name in set(expected) & set(tensors) if not tensors[name].is_floating_point()
    )
    problems = []
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shape: {', '.join(wrong)}")
    if not_float:
        problems.append(f"not floating point: {', '.join(not_float)}")
    if problems:
        raise WeightsError(
            f"the weights do not fit spec '{spec.name}' ({len(expected)} tensors expected); "
            + "; ".join(problems)
        )


def build(
    spec: SpecLike, dtype: DTypeLike | None = None, weights: Weights | None = None
) -> nn.Module:
    """The torch module of ``spec``.

    Args:
        spec: a validated :class:`ModelSpec`, or the path of a spec file.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype; default the spec's
            ``precision.dtype``. Parameters and buffers are cast to it.
        weights: a ``.safetensors`` path or a mapping of tensors, named as the module's
            ``state_dict()``; loaded strictly: a missing, unexpected or misshapen tensor is a
            :class:`WeightsError` naming every one. Without weights the module is initialized
            as its family is (see the generated ``_init_weights``).

    Returns the model (``...ForCausalLM``, ``...ForMaskedLM`` or
    ``...ForConditionalGeneration``), in training mode as any new module. Under
    ``with torch.device("meta"):`` it is built without memory, for counting parameters.

    Before initializing, the memory it takes (:func:`llmspec.estimates.memory.build_bytes`) is
    checked against what the default device has available: a model that cannot fit raises
    :class:`ModelTooLarge` instead of allocating until the machine gives up.
    """
    spec = _as_spec(spec)
    target = _torch_dtype(dtype if dtype is not None else spec.precision.dtype)
    model_class, config_class = model_classes(spec)
    # Given weights are loaded, cast and held by modules much as initialized ones: one check.
    name = next(k for k, v in DTYPES.items() if v == target)
    check_memory(spec, build_bytes(spec, name), f"building it in {name}")
    if weights is None:
        return model_class(config_class()).to(target)
    tensors, owned_by_caller = _read_weights(weights)
    # Nothing to initialize: build without memory, then take the given tensors as they are.
    with torch.device("meta"):
        model = model_class(config_class())
    _check_weights(spec, model.state_dict(), tensors)
    state = {
        name: tensor.detach().to(dtype=target, copy=owned_by_caller).contiguous()
        for name, tensor in tensors.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    return model


__all__ = [
    "DTYPES",
    "ModelTooLarge",
    "WeightsError",
    "build",
    "check_memory",
    "device_memory",
    "generate_source",
    "load_module",
    "model_classes",
]
