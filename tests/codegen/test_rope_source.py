"""The generated source of every rope knob (each scaling type, partial rotary, a local base)
meets the bar of tests/codegen/test_source.py: ruff-clean and formatted, torch and the stdlib
only, a shape comment on every reshape, and only the chosen variant emitted."""

from __future__ import annotations

import ast
import re
import subprocess
from typing import Any

import pytest
from codegen_variants import variant

from codegen.render import ruff_command
from llmspec.builder import generate_source

SCALINGS: dict[str, dict[str, Any]] = {
    "linear": {"type": "linear", "factor": 4.0},
    "dynamic": {"type": "dynamic", "factor": 2.0, "original_max_positions": 16},
    "llama3": {
        "type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_positions": 16,
    },
    "yarn": {"type": "yarn", "factor": 4.0, "original_max_positions": 16},
    "yarn-untruncated": {
        "type": "yarn",
        "factor": 4.0,
        "original_max_positions": 16,
        "truncate": False,
    },
    "longrope": {
        "type": "longrope",
        "short_factor": [1.0, 1.5],
        "long_factor": [2.0, 4.0],
        "original_max_positions": 16,
    },
}


def _source(scaling: str | None, partial: bool, local: bool) -> str:
    positions: dict[str, Any] = {"type": "rope"}
    if scaling:
        positions["scaling"] = SCALINGS[scaling]
    if partial:
        positions["rotary_dim"] = 4  # of head dim 8
    elif scaling == "longrope":
        positions["scaling"] = {**SCALINGS["longrope"], "short_factor": [1.0] * 4}
        positions["scaling"]["long_factor"] = [2.0] * 4
    attention: dict[str, Any] = {"heads": 4, "kv_heads": 2}
    if local:
        positions["local_base"] = 100.0
        attention.update(sliding_window=4, layer_pattern=["local", "global"])
    spec = variant("decoder-only", positions=positions, attention=attention)
    return generate_source(spec)


CASES = {
    f"{scaling or 'plain'}{'-partial' if partial else ''}{'-local' if local else ''}": (
        scaling,
        partial,
        local,
    )
    for scaling in [None, *SCALINGS]
    for partial, local in [(False, False), (True, False), (False, True)]
    if scaling or partial or local
}


def _ruff(*args: str, source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ruff_command(), *args, "--isolated", "--line-length", "100", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", CASES)
def test_rope_knob_source_is_clean_formatted_and_commented(name):
    source = _source(*CASES[name])
    checked = _ruff("check", "--select", "E,F,W,I,B,UP", "--target-version", "py310", source=source)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = _ruff("format", "--check", "--target-version", "py310", source=source)
    assert formatted.returncode == 0, formatted.stdout
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= {"math", "dataclasses", "typing", "torch"}
    for line in source.splitlines():
        if re.search(r"\.(view|reshape|transpose|permute|flatten)\(", line):
            assert line.lstrip().startswith(("#", '"')) or "# (" in line, line


@pytest.mark.parametrize("name", CASES)
def test_only_the_chosen_rope_variant_is_emitted(name):
    scaling, partial, local = CASES[name]
    source = _source(scaling, partial, local)
    kinds = {
        "linear": "Linear scaling",
        "dynamic": "Dynamic NTK scaling",
        "llama3": "Llama 3.1's scaling",
        "yarn": "YaRN (Peng",
        "longrope": "LongRoPE (Phi-3)",
    }
    for kind, marker in kinds.items():
        assert (marker in source) == (scaling is not None and scaling.startswith(kind)), kind
    assert ("x[..., :rd]" in source) == partial
    assert ("local_cos" in source) == local
    assert ("math.floor" in source) == (scaling == "yarn")
    assert ("rope_attention_factor" in source) == (
        scaling in ("yarn", "yarn-untruncated", "longrope")
    )
