"""The estimate's API contract: workload arguments, JSON and text reports, memory against device
count, and the ``llmspec estimate`` verb. The formulas are pinned in test_counts, test_memory
and test_compute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmspec.cli import main
from llmspec.estimates.compute import DEVICES
from llmspec.estimates.counts import PRECISIONS
from llmspec.estimates.memory import STRATEGIES
from llmspec.estimates.report import PLOT_GPUS, estimate, memory_by_gpus
from tests.llmspec.estimates.published_specs import (
    ALL_SPECS,
    GPT2_SMALL,
    TINYLLAMA,
    spec_of,
)

# ----------------------------------------------------------------------------------------
# The API contract


def test_seq_len_defaults_to_the_context_length() -> None:
    assert estimate(spec_of(GPT2_SMALL)).seq_len == 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"batch_size must be at least 1, got 0"),
        ({"seq_len": 0}, r"seq_len must be at least 1, got 0"),
        ({"gpus": -2}, r"gpus must be at least 1, got -2"),
        ({"seq_len": 1025}, r"seq_len 1025 exceeds gpt2-small's context_length 1024; use"),
    ],
)
def test_bad_workload_arguments_raise_value_error_saying_how_to_fix(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(spec_of(GPT2_SMALL), **kwargs)


def test_every_bad_argument_is_reported_at_once() -> None:
    with pytest.raises(ValueError, match=r"batch_size.*gpus"):
        estimate(spec_of(GPT2_SMALL), batch_size=0, gpus=0)


@pytest.mark.parametrize("text", ALL_SPECS)
def test_json_has_stable_keys_and_integer_numbers(text: str) -> None:
    data = estimate(spec_of(text), batch_size=2, seq_len=128, gpus=4).to_json()
    assert json.loads(json.dumps(data)) == data
    assert list(data) == [
        "name",
        "architecture",
        "inputs",
        "parameters",
        "weights_bytes",
        "inference",
        "training",
        "flops_per_token",
        "compute",
    ]
    assert data["inputs"] == {"batch_size": 2, "seq_len": 128, "gpus": 4}
    assert list(data["weights_bytes"]) == list(PRECISIONS)
    assert list(data["training"]["strategies"]) == [name for name, _ in STRATEGIES]

    def numbers(node: object) -> list[object]:
        if isinstance(node, dict):
            return [v for value in node.values() for v in numbers(value)]
        if isinstance(node, list):
            return [v for value in node for v in numbers(value)]
        return [node] if isinstance(node, int | float) and not isinstance(node, bool) else []

    floats = {"mfu": data["compute"].pop("mfu")}  # a ratio; seconds is None without a device
    assert isinstance(floats["mfu"], float)
    assert all(isinstance(n, int) for n in numbers(data))


def test_render_shows_human_units_in_aligned_columns() -> None:
    text = estimate(spec_of(GPT2_SMALL)).render()
    assert "124.44 M" in text
    assert "474.7 MiB" in text
    weights = text.split("\nWeights\n")[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in weights}) == 1  # right-aligned byte column
    assert weights[1].split() == ["fp32", "474.7", "MiB"]


def test_estimating_does_not_import_torch() -> None:
    code = "import sys, llmspec.estimates.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_memory_by_gpus_matches_the_estimate_at_each_device_count() -> None:
    spec = spec_of(TINYLLAMA)
    memory = memory_by_gpus(spec, batch_size=1, seq_len=256)
    assert list(memory) == [name for name, _ in STRATEGIES]
    assert PLOT_GPUS == (1, 2, 4, 8, 16, 32, 64)
    for i, n in enumerate(PLOT_GPUS):
        est = estimate(spec, seq_len=256, gpus=n)
        assert [memory[t.strategy][i] for t in est.training] == [t.total for t in est.training]
    assert len(set(memory["ddp"])) == 1  # DDP replicates: no saving from more devices
    assert memory["fsdp"] == memory["zero-3"]
    assert memory["zero-3"][-1] < memory["zero-2"][-1] < memory["zero-1"][-1] < memory["ddp"][-1]


# ----------------------------------------------------------------------------------------
# The estimate verb: compute flags, usage errors, the memory plot

TINY_SPEC = Path(__file__).resolve().parents[3] / "specs" / "tiny-decoder.yaml"


def test_estimate_verb_json_has_the_compute_view(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", str(TINY_SPEC), "--tokens", "2.5M", "--device", "a100", "--gpus", "4"]
    assert main([*argv, "--mfu", "0.5", "--json"]) == 0
    compute = json.loads(capsys.readouterr().out)["compute"]
    assert compute["tokens"] == 2_500_000 and compute["tokens_source"] == "given"
    assert compute["device"]["name"] == "a100" and compute["mfu"] == 0.5
    assert compute["seconds"] == pytest.approx(compute["flops"] / (4 * 312e12 * 0.5))
    assert main(["estimate", str(TINY_SPEC), "--json"]) == 0
    compute = json.loads(capsys.readouterr().out)["compute"]
    assert compute["tokens"] == compute["compute_optimal_tokens"] == 20 * compute["parameters"]
    assert compute["device"] is None and compute["seconds"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mfu", "0"], "must be above 0 and at most 1, got 0.0"),
        (["--mfu", "1.01"], "must be above 0 and at most 1, got 1.01"),
        (["--mfu", "lots"], "expected a number, got 'lots'"),
        (["--device", "tpu-v5"], "invalid choice: 'tpu-v5' (choose from"),
        (["--tokens", "0"], "must be a whole number of at least 1"),
        (["--tokens", "many"], "expected a token count"),
    ],
)
def test_bad_compute_flags_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", str(TINY_SPEC), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err
    if "--device" in flags:
        assert all(name in err for name in DEVICES)


def test_estimate_verb_writes_the_memory_plot_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmspec.cli.estimate as verb
    from llmspec import files

    written: list[tuple[Path, bytes]] = []
    real = files.write_atomic

    def spy(path: Path, data: str | bytes) -> Path:
        assert isinstance(data, bytes)
        written.append((Path(path), data))
        return real(path, data)

    monkeypatch.setattr(verb, "write_atomic", spy)  # the verb writes through it
    target = tmp_path / "memory.png"
    argv = ["estimate", str(TINY_SPEC), "--plot", str(target), "--device", "l4", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    json.loads(out)  # the plot does not disturb the JSON on stdout
    assert f"wrote {target}" in err
    assert written == [(target, target.read_bytes())]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["memory.png"]  # no temporary left
