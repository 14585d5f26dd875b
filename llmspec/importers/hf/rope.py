"""Rope's knobs to and from transformers' ``rope_parameters`` (one table, both directions).

transformers 5 keeps a model's rotary settings in one dict per layer type, standardized from
the older ``rope_theta`` / ``rope_scaling`` / ``partial_rotary_factor`` fields by
``standardize_rope_params``: ``rope_type`` (default, linear, dynamic, llama3, yarn, longrope),
``rope_theta``, ``partial_rotary_factor`` and the type's numbers. :func:`positions_from_hf`
turns such a dict (and, for Gemma 3, the local layers' one) into the spec's ``positions``
section; :func:`rope_parameters_to_hf` gives the dict back. Whatever the spec's rope cannot
express is refused by name (:class:`~llmspec.importers.hf.mapping.HFImportError`), never
dropped.

Names that differ: transformers' ``original_max_position_embeddings`` is the spec's
``original_max_positions``, except for ``dynamic``, whose original length transformers takes
from the config's ``max_position_embeddings``. A LongRoPE or YaRN without ``factor`` is given
the ratio transformers computes (``max_position_embeddings / original``), explicitly, so the
spec does not depend on its context length for it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llmspec.importers.hf.mapping import HFImportError

# The keys of each rope type's dict that the spec expresses (besides rope_type, rope_theta and
# partial_rotary_factor), transformers' name -> the spec's.
_KEYS: dict[str, dict[str, str]] = {
    "default": {},
    "linear": {"factor": "factor"},
    "dynamic": {"factor": "factor"},
    "llama3": {
        "factor": "factor",
        "low_freq_factor": "low_freq_factor",
        "high_freq_factor": "high_freq_factor",
        "original_max_position_embeddings": "original_max_positions",
    },
    "yarn": {
        "factor": "factor",
        "original_max_position_embeddings": "original_max_positions",
        "beta_fast": "beta_fast",
        "beta_slow": "beta_slow",
        "attention_factor": "attention_factor",
        "mscale": "mscale",
        "mscale_all_dim": "mscale_all_dim",
        "truncate": "truncate",
    },
    "longrope": {
        "short_factor": "short_factor",
        "long_factor": "long_factor",
        "original_max_position_embeddings": "original_max_positions",
        "factor": "factor",
        "attention_factor": "attention_factor",
    },
}
_COMMON = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HFImportError(f"config.json: {where} must be a number, got {json.dumps(value)}")
    return float(value)


def _scaling(where: str, parameters: dict[str, Any], max_positions: int) -> dict[str, Any] | None:
    """The spec's ``scaling`` of one rope_parameters dict (None for the default type)."""
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type not in _KEYS:
        raise HFImportError(
            f"config.json: {where}.rope_type = {json.dumps(rope_type)} is not supported; "
            f"supported: {', '.join(_KEYS)}"
        )
    names = _KEYS[rope_type]
    unknown = sorted(set(parameters) - _COMMON - set(names))
    if unknown:
        raise HFImportError(
            f"config.json: {where}.{unknown[0]} = {json.dumps(parameters[unknown[0]])} is not "
            f"supported by the spec's {rope_type} rope"
        )
    if rope_type == "default":
        return None
    scaling: dict[str, Any] = {"type": rope_type}
    for theirs, ours in names.items():
        value = parameters.get(theirs)
        if value is None:
            continue
        if ours in ("short_factor", "long_factor"):
            if not isinstance(value, list):
                raise HFImportError(
                    f"config.json: {where}.{theirs} must be a list of numbers, got "
                    f"{json.dumps(value)}"
                )
            scaling[ours] = [_number(f"{where}.{theirs}", v) for v in value]
        elif ours == "truncate":
            scaling[ours] = bool(value)
        elif ours == "original_max_positions":
            scaling[ours] = int(_number(f"{where}.{theirs}", value))
        else:
            scaling[ours] = _number(f"{where}.{theirs}", value)
    if rope_type == "yarn":
        # transformers reads `beta_fast or 32` and `beta_slow or 1`: a 0 is the default
        for name, default in (("beta_fast", 32.0), ("beta_slow", 1.0)):
            if not scaling.get(name):
                scaling[name] = default
        # and ignores one mscale without the other
        if not (scaling.get("mscale") and scaling.get("mscale_all_dim")):
            scaling.pop("mscale", None)
            scaling.pop("mscale_all_dim", None)
    if rope_type == "dynamic":
        scaling["original_max_positions"] = max_positions
    if rope_type in ("yarn", "longrope", "llama3"):
        scaling.setdefault("original_max_positions", max_positions)
    if rope_type in ("yarn", "longrope") and "factor" not in scaling:
        scaling["factor"] = max_positions / scaling["original_max_positions"]
    for required in ("factor",) if rope_type in ("linear", "dynamic", "llama3") else ():
        if required not in scaling:
            raise HFImportError(f"config.json: {where}.{required} is missing")
    return scaling


def positions_from_hf(
    parameters: dict[str, Any],
    max_positions: int,
    *,
    local: dict[str, Any] | None = None,
    where: str = "rope_parameters",
) -> dict[str, Any]:
    """The spec's ``positions`` from a standardized rope_parameters dict of the global (or
    only) layers, and ``local``, that of the local (sliding) layers when they differ (Gemma 3:
    they must be plain rope with the same partial factor; their base becomes ``local_base``).
    ``max_positions`` is the config's ``max_position_embeddings``."""
    if not isinstance(parameters, dict):
        raise HFImportError(f"config.json: {where} must be an object, got {parameters!r}")
    positions: dict[str, Any] = {"type": "rope"}
    base = parameters.get("rope_theta", 10000.0)
    positions["base"] = _number(f"{where}.rope_theta", base)
    partial = parameters.get("partial_rotary_factor", 1.0)
    if _number(f"{where}.partial_rotary_factor", partial) != 1.0:
        positions["partial"] = float(partial)
    scaling = _scaling(where, parameters, max_positions)
    if scaling is not None:
        positions["scaling"] = scaling
    if local is not None:
        local_where = where.replace("full_attention", "sliding_attention")
        if _scaling(local_where, local, max_positions) is not None:
            raise HFImportError(
                f"config.json: {local_where}.rope_type = {json.dumps(local.get('rope_type'))} "
                "is not supported: the spec's local layers rotate unscaled (local_base only)"
            )
        if local.get("partial_rotary_factor", 1.0) != partial:
            raise HFImportError(
                f"config.json: {local_where}.partial_rotary_factor differs from the global "
                "layers'; the spec rotates the same channels in every layer"
            )
        local_base = _number(f"{local_where}.rope_theta", local.get("rope_theta", 10000.0))
        if local_base != positions["base"]:
            positions["local_base"] = local_base
    return positions


def _partial_factor(positions: Any, head_dim: int) -> float | None:
    """transformers' partial_rotary_factor: a fraction whose ``int(head_dim * f)`` is the
    rotated width (None when the whole head rotates)."""
    rotated = positions.rotated(head_dim)
    if rotated == head_dim:
        return None
    if positions.partial is not None:
        return float(positions.partial)
    factor = rotated / head_dim
    while int(head_dim * factor) < rotated:
        factor = math.nextafter(factor, 1.0)
    return factor


def rope_parameters_to_hf(positions: Any, head_dim: int, max_positions: int) -> dict[str, Any]:
    """transformers 5's rope_parameters of the spec's rope ``positions`` for the global (or
    only) layers, in a config whose ``max_position_embeddings`` is ``max_positions``; with a
    ``local_base``, :func:`local_rope_parameters_to_hf` gives the local layers'. The inverse of
    :func:`positions_from_hf`. transformers' dynamic scaling takes its original length from
    max_position_embeddings, so a different one is refused."""
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": positions.base}
    partial = _partial_factor(positions, head_dim)
    if partial is not None:
        out["partial_rotary_factor"] = partial
    scaling = positions.scaling
    if scaling is None:
        return out
    if scaling.type == "dynamic" and scaling.original_max_positions != max_positions:
        raise HFImportError(
            f"positions.scaling.original_max_positions ({scaling.original_max_positions}) must "
            f"equal max_position_embeddings ({max_positions}) for transformers' dynamic rope, "
            "which takes its original length from there"
        )
    out["rope_type"] = scaling.type
    for theirs, ours in _KEYS[scaling.type].items():
        value = getattr(scaling, ours, None)
        if value is not None:
            out[theirs] = list(value) if isinstance(value, list) else value
    return out


def local_rope_parameters_to_hf(positions: Any, head_dim: int) -> dict[str, Any]:
    """The local (sliding) layers' rope_parameters: plain rope with ``local_base``."""
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": positions.local_base}
    partial = _partial_factor(positions, head_dim)
    if partial is not None:
        out["partial_rotary_factor"] = partial
    return out
