"""Training compute from a parameter count: FLOPs for a token count, the compute-optimal
token count, and the training time on a device at an assumed model FLOPs utilization (MFU).

References:

* FLOPs: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1,
  https://arxiv.org/abs/2001.08361
* Compute-optimal tokens: Hoffmann et al. 2022, "Training Compute-Optimal Large Language
  Models" (Chinchilla), https://arxiv.org/abs/2203.15556
* MFU: Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", appendix B,
  https://arxiv.org/abs/2204.02311
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Hoffmann et al. 2022 (table 3, and the 70B/1.4T-token Chinchilla): about 20 training tokens
# per parameter for the least loss at a given compute. Their N counts every parameter,
# embeddings included, so the compute-optimal count here is 20 x ParameterCount.total.
TOKENS_PER_PARAMETER = 20
DEFAULT_MFU = 0.4  # a good large-scale run; PaLM reports 46%, GPT-3 on V100s about 21%


@dataclass(frozen=True)
class Device:
    """One accelerator: its peak dense matrix-multiply rate at ``precision`` (no 2:4 sparsity)
    and, where it has its own, its memory."""

    name: str
    description: str
    peak_flops: int  # FLOP/s
    precision: str
    memory_bytes: int | None = None


# Vendor datasheet figures, dense (the datasheets also print twice these "with sparsity"):
# * H100 SXM: 989 TFLOP/s bf16 tensor core, 80 GB HBM3
#   (NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/)
# * A100 SXM: 312 TFLOP/s bf16 tensor core, 80 GB HBM2e
#   (NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/)
# * V100 SXM2: 125 TFLOP/s fp16 tensor core (no bf16), 32 GB HBM2
#   (NVIDIA V100 datasheet, https://www.nvidia.com/en-us/data-center/v100/)
# * L4: 121 TFLOP/s bf16 tensor core, 24 GB GDDR6
#   (NVIDIA L4 datasheet, https://www.nvidia.com/en-us/data-center/l4/)
# The CPUs are nominal machines, their peaks worked out from the vector units, fp32:
# * cpu-avx512: 32 cores x 2.0 GHz x 64 FLOP/cycle (two 512-bit FMA units: 2 x 16 lanes x 2)
# * cpu-avx2: 8 cores x 3.0 GHz x 32 FLOP/cycle (two 256-bit FMA units: 2 x 8 lanes x 2)
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("h100", "NVIDIA H100 SXM", 989 * 10**12, "bf16", 80 * 2**30),
        Device("a100", "NVIDIA A100 SXM 80GB", 312 * 10**12, "bf16", 80 * 2**30),
        Device("v100", "NVIDIA V100 SXM2 32GB", 125 * 10**12, "fp16", 32 * 2**30),
        Device("l4", "NVIDIA L4", 121 * 10**12, "bf16", 24 * 2**30),
        Device("cpu-avx512", "32-core AVX-512 CPU at 2.0 GHz", 32 * 2 * 10**9 * 64, "fp32"),
        Device("cpu-avx2", "8-core AVX2 CPU at 3.0 GHz", 8 * 3 * 10**9 * 32, "fp32"),
    )
}


def training_seconds(
    flops: int, device: Device, *, gpus: int = 1, mfu: float = DEFAULT_MFU
) -> float:
    """Seconds to do ``flops`` on ``gpus`` devices, each at ``mfu`` of its peak: the model
    FLOPs utilization (Chowdhery et al. 2022), the share of the peak that goes to the model's
    own arithmetic. Communication is assumed hidden (perfect scaling across devices).

    >>> round(training_seconds(989 * 10**12, DEVICES["h100"], mfu=0.5))
    2
    """
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    return flops / (gpus * device.peak_flops * mfu)


@dataclass(frozen=True)
class TrainingCompute:
    """The training compute view: FLOPs for ``tokens`` (given, or else the compute-optimal
    count) at 6 FLOPs per matrix-multiply parameter per token, and the time on a device.

    ``matmul_parameters`` (:attr:`ParameterCount.matmul`) size the FLOPs, as for FLOPs per
    token: ``flops = 6 x matmul_parameters x tokens``. ``parameters`` (all of them, embeddings
    included, as Hoffmann et al. count) size the compute-optimal count: ``20 x parameters``.
    """

    parameters: int
    matmul_parameters: int
    compute_optimal_tokens: int
    tokens: int
    tokens_given: bool  # False: ``tokens`` is the compute-optimal count
    device: Device | None
    mfu: float
    gpus: int

    @property
    def flops(self) -> int:
        return 6 * self.matmul_parameters * self.tokens

    @property
    def compute_optimal_flops(self) -> int:
        return 6 * self.matmul_parameters * self.compute_optimal_tokens

    @property
    def seconds(self) -> float | None:
        """Training time for ``tokens`` on ``gpus`` devices; None without a device."""
        if self.device is None:
            return None
        return training_seconds(self.flops, self.device, gpus=self.gpus, mfu=self.mfu)

    def to_json(self) -> dict[str, Any]:
        device = self.device
        return {
            "parameters": self.parameters,
            "matmul_parameters": self.matmul_parameters,
            "tokens_per_parameter": TOKENS_PER_PARAMETER,
            "compute_optimal_tokens": self.compute_optimal_tokens,
            "compute_optimal_flops": self.compute_optimal_flops,
            "tokens": self.tokens,
            "tokens_source": "given" if self.tokens_given else "compute-optimal",
            "flops": self.flops,
            "device": None
            if device is None
            else {
                "name": device.name,
                "description": device.description,
                "peak_flops": device.peak_flops,
                "precision": device.precision,
                "memory_bytes": device.memory_bytes,
            },
            "mfu": self.mfu,
            "gpus": self.gpus,
            "seconds": self.seconds,
        }
