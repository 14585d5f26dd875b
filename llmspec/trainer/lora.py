"""LoRA adapters on a generated model, with Hugging Face PEFT.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) freezes the model and learns, for each
targeted linear layer ``W``, a low-rank update ``(alpha / r) * B @ A`` (``A``: r x in, random;
``B``: out x r, zero, so training starts from the model as it is).

Why PEFT rather than our own: it wraps any ``torch.nn.Module`` by the names of its submodules
(our generated attention and MLP projections: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``gate_proj``, ``up_proj``, ``down_proj``), merges the update back into ``W``
(``merge_and_unload``) and writes adapters in the format other tools read
(``adapter_model.safetensors`` and ``adapter_config.json``: PEFT loads them onto the
transformers model ``llmspec export-hf`` writes, whose modules have other names, only after
renaming; the names here are our module's). Its LoRA layer is a few additions around
``nn.Linear``; measured on the tiny specs it costs no more than an own implementation would.

Targets are module names as PEFT matches them: a name (``q_proj``) or a dotted tail
(``self_attn.q_proj``, ``cross_attn.v_proj``) of a linear layer of the model; a name that
matches no linear layer is refused, listing the names that exist.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmspec.files import write_atomic, writing
from llmspec.trainer.settings import TrainError

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MARK = "lora_"  # every adapter parameter's name holds it
DEFAULT_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class LoraSettings:
    """The adapter: its rank, scale numerator, dropout and the modules it targets."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"lora r must be at least 1, got {self.r}")
        if self.alpha < 1:
            out.append(f"lora alpha must be at least 1, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            out.append(f"lora dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            out.append("lora targets must name at least one module")
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoraSettings:
        return cls(**{**data, "targets": tuple(data["targets"])})


LORA_HELP = "write --lora r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj"


def parse_lora(text: str) -> LoraSettings:
    """``r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj`` (every key optional; the items
    after ``targets=`` that hold no ``=`` are more targets). TrainError for anything else."""
    values: dict[str, Any] = {}
    key = None
    for item in (part.strip() for part in text.split(",")):
        if "=" in item:
            key, value = (s.strip() for s in item.split("=", 1))
            if key in values:
                raise TrainError(f"--lora gives {key} twice; {LORA_HELP}")
            if key == "targets":
                values[key] = [value] if value else []
                continue
            if key not in ("r", "alpha", "dropout"):
                raise TrainError(
                    f"--lora: unknown key {key!r}; the keys are r, alpha, dropout, targets; "
                    + LORA_HELP
                )
            try:
                values[key] = float(value) if key == "dropout" else int(value)
            except ValueError:
                raise TrainError(
                    f"--lora {key}={value!r} is not a number (r and alpha are whole "
                    f"numbers); {LORA_HELP}"
                ) from None
        elif key == "targets" and item:
            values["targets"].append(item)
        elif item:
            raise TrainError(f"--lora: {item!r} is not key=value; {LORA_HELP}")
    if "targets" in values:
        values["targets"] = tuple(values["targets"])
    settings = LoraSettings(**values)
    problems = settings.problems()
    if problems:
        raise TrainError("; ".join(problems))
    return settings


def linear_names(model: Any) -> list[str]:
    """The last names of the model's linear layers, sorted (what ``targets`` may name)."""
    from torch import nn

    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    )


def check_targets(model: Any, targets: tuple[str, ...]) -> None:
    """Refuse a target that names no linear layer of ``model``, listing those that exist."""
    from torch import nn

    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    unknown = [
        t for t in targets if not any(name == t or name.endswith("." + t) for name in linear)
    ]
    if unknown:
        raise TrainError(
            f"lora targets {', '.join(unknown)} name no linear layer of this model; its linear "
            f"layers are {', '.join(linear_names(model))} (a dotted tail such as "
            "self_attn.q_proj narrows a name)"
        )


def peft_config(settings: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
    )


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """``model`` with LoRA adapters on its targets, everything else frozen (a PeftModel)."""
    try:
        from peft import get_peft_model
    except ImportError as err:
        raise TrainError(
            f"fine-tuning with LoRA needs peft ({err}); install it with: pip install "
            "'llmspec[finetune]'"
        ) from None
    check_targets(model, settings.targets)
    return get_peft_model(model, peft_config(settings))


def adapter_only(state: dict[str, Any]) -> dict[str, Any]:
    """The adapter's entries of a (PEFT model's) state dict."""
    return {name: tensor for name, tensor in state.items() if ADAPTER_MARK in name}


def load_adapter(peft_model: Any, state: dict[str, Any]) -> None:
    """Load the adapter entries of a full state dict (names as ``peft_model``'s own) into it;
    TrainError when the adapter does not fit the model."""
    adapter = adapter_only(state)
    own = adapter_only(dict(peft_model.state_dict()))
    if set(adapter) != set(own):
        raise TrainError(
            "the saved adapter does not fit this model and settings (its weights have other "
            "names); resume with the run's own spec and --lora"
        )
    peft_model.load_state_dict(adapter, strict=False)


def save_adapter(directory: Path, peft_model: Any) -> None:
    """PEFT's files for the model's adapter: ``adapter_model.safetensors`` (its weights, as
    PEFT names them) and ``adapter_config.json``, each written atomically into
    ``directory``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    weights = get_peft_model_state_dict(peft_model)
    config = peft_model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    write_atomic(
        directory / ADAPTER_WEIGHTS,
        save({name: t.detach().cpu().contiguous() for name, t in weights.items()}),
    )
    write_atomic(directory / ADAPTER_CONFIG, json.dumps(config, indent=2, default=str) + "\n")


def merged_weights(peft_model: Any) -> dict[str, Any]:
    """The base model's state dict with the adapter merged into its weights
    (``W + (alpha / r) * B @ A``); ``peft_model`` is unwrapped by this: call it last."""
    base = peft_model.merge_and_unload()
    return {name: t.detach().cpu().contiguous() for name, t in base.state_dict().items()}
