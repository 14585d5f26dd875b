"""Reading a Hugging Face model directory: config.json, the weight files, the tokenizer's files.

The weights are ``model.safetensors``, a sharded ``model.safetensors.index.json``, or
``pytorch_model.bin`` / its index, read with ``torch.load(weights_only=True)``; every shard
must lie inside the directory. JSON files are read with a size cap (:data:`MAX_JSON_BYTES`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmspec.importers.hf.families import SUPPORTED_FAMILIES
from llmspec.importers.hf.mapping import HFImportError, Weights
from runtime.artifact import CHAT_TEMPLATE_LIMIT
from runtime.reading import MiB, UnreadableFile, read_json, read_text

__all__ = ["TOKENIZER_FILE", "Source", "read_source"]

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Source:
    """What an import reads from HF_DIR."""

    path: Path
    config: dict[str, Any]
    weights: Weights
    tokenizer_json: Path | None
    token_names: dict[str, str]  # role -> text from special_tokens_map / tokenizer_config
    generation: dict[str, Any]
    chat_template: str | None = None  # the default chat template (Jinja source), if any
    chat_notes: list[str] = field(default_factory=list)  # where it came from, what was left


# config.json and the tokenizer's JSON files are kilobytes; a shard index or a tokenizer_config
# with a long chat template a few MiB.
MAX_JSON_BYTES = 64 * MiB


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, MAX_JSON_BYTES, "JSON file")
    except UnreadableFile as err:  # not a regular file, too large, too deep, not JSON
        raise HFImportError(str(err)) from None
    if not isinstance(data, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    return data


def _load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch.load raise many kinds on a bad file
        raise HFImportError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise HFImportError(f"{path}: not a state dict of tensors")
    return dict(state)


def _load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (directory / single).is_file():
            return _load_tensor_file(directory / single), single
        if (directory / index).is_file():
            weight_map = _read_json(directory / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise HFImportError(f"{directory / index}: no weight_map")
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                shard_path = directory / shard
                if Path(shard).is_absolute() or ".." in Path(shard).parts:
                    raise HFImportError(
                        f"{directory / index}: shard {shard!r} is outside {directory}"
                    )
                if not shard_path.is_file():
                    raise HFImportError(f"{directory / index}: shard {shard} is missing")
                tensors.update(_load_tensor_file(shard_path))
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise HFImportError(f"{directory / index}: shards lack {', '.join(missing[:5])}")
            return tensors, index
    raise HFImportError(
        f"{directory}: no weights; expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def _token_names(directory: Path) -> dict[str, str]:
    """Special-token texts by role from special_tokens_map.json, then tokenizer_config.json."""
    names: dict[str, str] = {}
    for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / file_name
        if not path.is_file():
            continue
        data = _read_json(path)
        for role in ("pad", "bos", "eos", "unk", "mask", "cls", "sep"):
            value = data.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value and role not in names:
                names[role] = value
    return names


# Where transformers keeps a chat template, in the order it prefers them (a separate file
# replaces tokenizer_config.json's key).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")


def _chat_template(directory: Path) -> tuple[str | None, list[str]]:
    """The default chat template and notes on it: ``chat_template.jinja`` (transformers 5),
    else ``chat_template`` of ``chat_template.json`` or ``tokenizer_config.json``. A list of
    named templates gives its ``default`` one; the others are noted as not imported."""
    for file_name in CHAT_TEMPLATE_FILES:
        path = directory / file_name
        if not path.is_file():
            continue
        if file_name.endswith(".jinja"):
            try:
                text = read_text(path, CHAT_TEMPLATE_LIMIT, "chat template")
            except UnreadableFile as err:
                raise HFImportError(str(err)) from None
            return text, [f"chat template from {file_name}"]
        value = _read_json(path).get("chat_template")
        if value is None:
            continue
        if isinstance(value, str):
            return value, [f"chat template from {file_name}"]
        named: dict[str, str] = {}
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict):
                name, template = item.get("name"), item.get("template")
                if isinstance(name, str) and isinstance(template, str):
                    named[name] = template
        if not named or len(named) != len(value):
            raise HFImportError(
                f"{path}: chat_template must be a string or a list of {{name, template}} strings"
            )
        others = sorted(name for name in named if name != "default")
        notes = [f"chat template {name!r} of {file_name} not imported" for name in others]
        if "default" not in named:
            return None, notes
        return named["default"], [f"chat template 'default' from {file_name}", *notes]
    return None, []


def read_source(hf_dir: str | os.PathLike[str]) -> Source:
    """Read config.json, the weights and the tokenizer files of a Hugging Face directory."""
    directory = Path(hf_dir)
    if not directory.is_dir():
        raise HFImportError(f"{directory}: not a directory (give a save_pretrained directory)")
    config_path = directory / "config.json"
    if not config_path.exists():  # a FIFO or a device is refused by _read_json, naming it
        raise HFImportError(
            f"{directory}: no config.json; give a Hugging Face model directory as written by "
            "save_pretrained"
        )
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise HFImportError(
            f"{config_path}: model_type {model_type!r} is not supported; llmspec imports "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    tensors, weights_name = _load_weights(directory)
    generation_path = directory / "generation_config.json"
    tokenizer_path = directory / TOKENIZER_FILE
    chat_template, chat_notes = _chat_template(directory)
    return Source(
        path=directory,
        config=config,
        weights=Weights(tensors, str(directory / weights_name)),
        tokenizer_json=tokenizer_path if tokenizer_path.is_file() else None,
        token_names=_token_names(directory) if tokenizer_path.is_file() else {},
        generation=_read_json(generation_path) if generation_path.is_file() else {},
        chat_template=chat_template,
        chat_notes=chat_notes,
    )
