"""The torchrun cluster: this process's rank, the process group and its collectives, and the
model wrapped under the run's strategy (DDP or FSDP2)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

from llmspec.spec.sections import ModelSpec
from llmspec.trainer.settings import TrainError

STRATEGIES = ("ddp", "fsdp")


@dataclass
class Cluster:
    """This process's place in the job: rank, world size, device, and the strategy."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"
    strategy: str | None = None
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, strategy: str | None) -> Cluster:
        import torch

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if strategy is None:
            if world > 1:
                raise TrainError(
                    f"running as {world} processes (torchrun) needs --strategy ddp or fsdp; "
                    "without it each process would train its own copy"
                )
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        if strategy not in STRATEGIES:
            raise TrainError(f"unknown strategy {strategy!r}; choose ddp or fsdp")
        import torch.distributed as dist

        owns = False
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            backend = "nccl" if cuda else "gloo"
            if "RANK" in os.environ:
                dist.init_process_group(backend)
            else:  # one process without torchrun: a group of one
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            owns = True
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device, strategy, owns)

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes (float64)."""
        if self.strategy is None:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def all_ok(self, ok: bool) -> bool:
        """Whether every process is ok (so that all raise together instead of hanging)."""
        return self.all_sum([0.0 if ok else 1.0])[0] == 0.0

    def _collective_device(self) -> Any:
        import torch

        return self.device if getattr(self.device, "type", "cpu") == "cuda" else torch.device("cpu")

    def barrier(self) -> None:
        """Wait until every process gets here (nothing without a strategy)."""
        if self.strategy is not None:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this process made it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def wrap_model(model: Any, spec: ModelSpec, cluster: Cluster) -> Any:
    """The model under the cluster's strategy (DDP or FSDP2), or as it is."""
    if cluster.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [cluster.device.index] if cluster.device.type == "cuda" else None
        # BERT's pooler is not part of the masked-LM loss: its parameters get no gradient.
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=spec.head.pooler
        )
    if cluster.strategy == "fsdp":
        from torch import nn
        from torch.distributed.fsdp import fully_shard

        # The generated layers return views and never modify them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        for name, module in model.named_modules():
            if name.endswith("layers") and isinstance(module, nn.ModuleList):
                for layer in module:
                    if not hasattr(layer, "cross_attn"):
                        fully_shard(layer)
        fully_shard(model)
    return model
