"""``llmspec estimate --finetune lora``: the fine-tuning block, its JSON, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

from llmspec.cli import main

SPECS = Path(__file__).resolve().parents[3] / "specs"


def test_the_finetune_estimate_adds_its_block_and_json(capsys):
    argv = ["estimate", str(SPECS / "tiny-decoder.yaml"), "--batch-size", "2", "--seq-len", "64"]
    assert main([*argv, "--finetune", "lora", "--lora-rank", "4"]) == 0
    text = capsys.readouterr().out
    assert "LoRA fine-tuning step (r=4, targets q_proj,v_proj: 8 layers; batch 2 x 64)" in text
    assert main([*argv, "--finetune", "lora", "--checkpointing", "--json"]) == 0
    tuning = json.loads(capsys.readouterr().out)["finetune"]
    # q_proj 128 -> 128 and v_proj 128 -> 64 (2 kv heads of 32), rank 8, 4 layers
    assert tuning["adapter_parameters"] == 4 * 8 * ((128 + 128) + (128 + 64))
    assert tuning["checkpointing"] is True
    assert tuning["total_bytes"] == sum(
        tuning[k] for k in ("frozen_weights_bytes", "adapter_states_bytes", "activation_bytes")
    )
    assert main([*argv, "--json"]) == 0
    assert "finetune" not in json.loads(capsys.readouterr().out)  # only when asked


def test_an_unknown_lora_target_is_refused_listing_the_layers(capsys):
    spec = str(SPECS / "tiny-t5.yaml")
    assert main(["estimate", spec, "--finetune", "lora", "--lora-targets", "c_attn"]) == 1
    err = capsys.readouterr().err
    assert "lora targets c_attn name no linear layer of tiny-t5" in err
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in err
