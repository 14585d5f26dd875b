"""The training compute view: FLOPs for a token count, compute-optimal tokens and the time on
a device (llmspec.estimates.compute)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmspec.estimates.compute import DEVICES, training_seconds
from llmspec.estimates.report import estimate
from llmspec.estimates.units import human_duration
from tests.llmspec.estimates.published_specs import (
    GPT2_SMALL,
    spec_of,
)

# ----------------------------------------------------------------------------------------
# Training compute: FLOPs for a token count, compute-optimal tokens, time on a device

GPT2_TOTAL = 124_439_808
GPT2_MATMUL = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768  # tied output included


def test_training_flops_are_6_x_matmul_parameters_x_tokens() -> None:
    compute = estimate(spec_of(GPT2_SMALL), tokens=10**9).compute
    assert compute.matmul_parameters == GPT2_MATMUL == 123_532_032
    assert compute.flops == 6 * 123_532_032 * 10**9 == 741_192_192 * 10**9
    assert compute.tokens_given
    # the same count as the per-token figure, times the tokens
    assert compute.flops == estimate(spec_of(GPT2_SMALL)).training_flops_per_token * 10**9


def test_compute_optimal_tokens_are_20_per_parameter_and_the_default_token_count() -> None:
    compute = estimate(spec_of(GPT2_SMALL)).compute
    assert compute.compute_optimal_tokens == 20 * GPT2_TOTAL == 2_488_796_160
    assert compute.tokens == compute.compute_optimal_tokens and not compute.tokens_given
    assert compute.compute_optimal_flops == 6 * GPT2_MATMUL * 2_488_796_160
    assert compute.seconds is None  # no device, no time
    given = estimate(spec_of(GPT2_SMALL), tokens=5).compute
    assert given.compute_optimal_tokens == 2_488_796_160  # shown always


def test_h100_at_mfu_0_4_trains_gpt2_small_on_1b_tokens_in_31_minutes() -> None:
    # 741.19 PFLOP / (989 TFLOP/s x 0.4) = 7.41192192e17 / 3.956e14 = 1873.58997 s
    compute = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100").compute
    assert compute.seconds == pytest.approx(1873.5899697, rel=1e-9)
    assert human_duration(1873.5899697) == "31.2 minutes"
    eight = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100", gpus=8, mfu=0.5)
    assert eight.compute.seconds == pytest.approx(7.41192192e17 / (8 * 989e12 * 0.5))


def test_device_table_holds_the_vendor_dense_peaks() -> None:
    peaks = {name: d.peak_flops for name, d in DEVICES.items()}
    assert peaks["h100"] == 989 * 10**12
    assert peaks["a100"] == 312 * 10**12
    assert peaks["v100"] == 125 * 10**12
    assert peaks["l4"] == 121 * 10**12
    assert all(name.startswith("cpu-") for name in list(DEVICES)[4:])
    assert training_seconds(312 * 10**12, DEVICES["a100"], mfu=1.0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mfu": 0.0}, r"mfu must be in \(0, 1\], got 0.0"),
        ({"mfu": 1.5}, r"mfu must be in \(0, 1\], got 1.5"),
        ({"device": "tpu"}, r"unknown device 'tpu'; choose one of: h100, a100, v100, l4"),
        ({"tokens": 0}, r"tokens must be at least 1, got 0"),
    ],
)
def test_bad_compute_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(spec_of(GPT2_SMALL), **kwargs)


def test_compute_json_keys() -> None:
    data = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100", gpus=2).to_json()
    compute = data["compute"]
    assert compute == {
        "parameters": GPT2_TOTAL,
        "matmul_parameters": GPT2_MATMUL,
        "tokens_per_parameter": 20,
        "compute_optimal_tokens": 20 * GPT2_TOTAL,
        "compute_optimal_flops": 6 * GPT2_MATMUL * 20 * GPT2_TOTAL,
        "tokens": 10**9,
        "tokens_source": "given",
        "flops": 6 * GPT2_MATMUL * 10**9,
        "device": {
            "name": "h100",
            "description": "NVIDIA H100 SXM",
            "peak_flops": 989 * 10**12,
            "precision": "bf16",
            "memory_bytes": 80 * 2**30,
        },
        "mfu": 0.4,
        "gpus": 2,
        "seconds": pytest.approx(1873.5899697 / 2),
    }
    assert json.loads(json.dumps(data)) == data


def test_render_shows_the_compute_view() -> None:
    text = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100").render()
    section = text.split("\nTraining compute")[1]
    assert "2.49 B" in section and "Hoffmann et al. 2022" in section
    assert "741.19 PFLOP" in section
    assert "31.2 minutes" in section and "1 x h100" in section
    bare = estimate(spec_of(GPT2_SMALL)).render()
    assert "give --device (h100, a100, v100, l4" in bare
