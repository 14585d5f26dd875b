"""llmspec.builder: the torch module of a spec, its weight names, dtype, weights and CLI verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmspec.builder import WeightsError, build, generate_source
from llmspec.cli import main
from llmspec.cli.codegen import codegen as codegen_command
from llmspec.estimates.counts import count_parameters
from llmspec.spec.loading import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
SPEC_FILES = sorted(SPECS.glob("*.yaml"))
TINY = [p for p in SPEC_FILES if p.stem.startswith("tiny-")]


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_parameter_count_equals_the_estimate(path: Path) -> None:
    spec = load_spec(path)
    with torch.device("meta"):  # real-size specs cost nothing this way
        model = build(spec)
    assert _parameters(model) == count_parameters(spec).total


def _inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 250, (2, 6), generator=torch.Generator().manual_seed(0))
    if hasattr(model, "encode"):
        return {"input_ids": ids, "attention_mask": None, "decoder_input_ids": ids[:, :4]}
    return {"input_ids": ids}


def test_weight_names_follow_the_contract() -> None:
    gpt = build(SPECS / "tiny-gpt.yaml").state_dict()
    assert {
        "embed_tokens.weight",
        "decoder.embed_positions.weight",
        "decoder.layers.1.self_attn.q_proj.bias",
        "decoder.layers.1.self_attn_norm.weight",
        "decoder.layers.1.mlp.up_proj.weight",
        "decoder.layers.1.mlp.down_proj.bias",
        "decoder.layers.1.mlp_norm.bias",
        "decoder.final_norm.weight",
    } <= set(gpt)
    assert "lm_head.weight" not in gpt  # tied: stored once, as embed_tokens.weight
    bert = build(SPECS / "tiny-encoder.yaml").state_dict()
    assert {
        "encoder.embed_token_types.weight",
        "encoder.embed_norm.bias",
        "head_transform.dense.weight",
        "head_transform.norm.bias",
        "logits_bias",
    } <= set(bert)
    assert not any(name.startswith("encoder.final_norm") for name in bert)  # post-norm
    t5 = build(SPECS / "tiny-t5.yaml").state_dict()
    assert {
        "encoder.relative_bias.weight",
        "decoder.relative_bias.weight",
        "decoder.layers.0.cross_attn.k_proj.weight",
        "decoder.layers.0.cross_attn_norm.weight",
        "decoder.layers.0.mlp.gate_proj.weight",
    } <= set(t5)
    assert t5["encoder.relative_bias.weight"].shape == (32, 4)
    assert not any(name.endswith(".bias") and "relative" not in name for name in t5)
    bart = build(SPECS / "tiny-bart.yaml")
    assert bart.state_dict()["decoder.embed_positions.weight"].shape == (128 + 2, 64)
    assert "logits_bias" in bart.state_dict()
    assert "logits_bias" not in dict(bart.named_parameters())  # a buffer: loaded, not trained
    llama = build(SPECS / "tiny-decoder.yaml").state_dict()
    assert llama["decoder.layers.0.self_attn.k_proj.weight"].shape == (2 * 32, 128)  # [out, in]


def test_dtype_comes_from_the_spec_unless_given() -> None:
    spec = load_spec(SPECS / "llama-1b.yaml")
    with torch.device("meta"):
        assert next(build(spec).parameters()).dtype == torch.bfloat16
        assert next(build(spec, dtype="fp16").parameters()).dtype == torch.float16
        assert next(build(spec, dtype=torch.float32).parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        build(spec, dtype="fp8")


def test_initialization_follows_the_family() -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        _check_initialization()


def _check_initialization() -> None:
    gpt = build(SPECS / "tiny-gpt.yaml")
    assert abs(float(gpt.embed_tokens.weight.std()) - 0.02) < 0.002
    assert float(gpt.decoder.layers[0].self_attn.q_proj.bias.abs().max()) == 0.0
    residual = gpt.decoder.layers[0].mlp.down_proj.weight.std()
    assert abs(float(residual) - 0.02 / (2 * 2) ** 0.5) < 0.002  # GPT-2's scaled residual init
    assert float(gpt.decoder.layers[0].mlp_norm.weight.min()) == 1.0
    t5 = build(SPECS / "tiny-t5.yaml")
    assert abs(float(t5.embed_tokens.weight.std()) - 1.0) < 0.05
    q = t5.encoder.layers[0].self_attn.q_proj.weight.std()
    assert abs(float(q) - (64 * 16) ** -0.5) < 0.01  # T5 folds 1/sqrt(head_dim) into q
    k = t5.encoder.layers[0].self_attn.k_proj.weight.std()
    assert abs(float(k) - 64**-0.5) < 0.02


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_weights_round_trip_through_a_dict_and_safetensors(path: Path, tmp_path: Path) -> None:
    original = build(path).eval()
    state = {k: v.clone() for k, v in original.state_dict().items()}
    save_file(state, tmp_path / "weights.safetensors")
    from_dict = build(path, weights=state).eval()
    from_file = build(path, weights=tmp_path / "weights.safetensors").eval()
    with torch.no_grad():
        expected = original(**_inputs(original)).logits
        for model in (from_dict, from_file):
            assert torch.equal(model(**_inputs(model)).logits, expected)
            assert all(p.requires_grad for p in model.parameters())
    state["embed_tokens.weight"].zero_()  # the caller's tensors are copied, not shared
    assert from_dict.embed_tokens.weight.abs().sum() > 0


def test_weights_are_loaded_strictly_with_every_problem_named() -> None:
    state = build(SPECS / "tiny-gpt.yaml").state_dict()
    del state["decoder.final_norm.bias"]
    state["lm_head.weight"] = torch.zeros(258, 64)
    state["decoder.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightsError) as caught:
        build(SPECS / "tiny-gpt.yaml", weights=state)
    message = str(caught.value)
    assert "missing: decoder.final_norm.bias" in message
    assert "unexpected: lm_head.weight" in message
    assert "decoder.layers.0.mlp.up_proj.weight (expected [256, 64], got [3, 3])" in message


def test_a_missing_or_bad_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        build(SPECS / "tiny-gpt.yaml", weights=tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        build(SPECS / "tiny-gpt.yaml", weights=bad)


def test_weights_are_cast_to_the_requested_dtype() -> None:
    state = build(SPECS / "tiny-bart.yaml").state_dict()
    model = build(SPECS / "tiny-bart.yaml", dtype="bf16", weights=state)
    assert {t.dtype for t in model.state_dict().values()} == {torch.bfloat16}


def test_codegen_command_prints_or_writes_atomically(tmp_path: Path, capsys) -> None:
    spec = SPECS / "tiny-decoder.yaml"
    assert codegen_command(spec, None) == 0
    assert capsys.readouterr().out == generate_source(load_spec(spec))
    target = tmp_path / "model.py"
    assert main(["codegen", str(spec), "-o", str(target)]) == 0
    assert target.read_text() == generate_source(load_spec(spec))
    assert [p.name for p in tmp_path.iterdir()] == ["model.py"]  # no temporary left behind
    assert main(["codegen", str(spec), "-o", str(tmp_path / "no" / "dir" / "m.py")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_codegen_of_a_bad_spec_exits_one(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPECS / "tiny-gpt.yaml").read_text().replace("heads: 4", "heads: 5"))
    assert main(["codegen", str(bad)]) == 1
    assert "attention.heads" in capsys.readouterr().err


def test_the_generated_file_runs_on_its_own(tmp_path: Path) -> None:
    target = tmp_path / "model.py"
    target.write_text(generate_source(load_spec(SPECS / "tiny-t5.yaml")))
    code = (
        "import torch, model\n"
        "m = model.TinyT5ForConditionalGeneration().eval()\n"
        "ids = torch.randint(0, 275, (2, 5))\n"
        "enc = m.encode(ids)\n"
        "out = m.decode(ids[:, :1], torch.ones_like(ids), enc.cross_key_values)\n"
        "print(tuple(out.logits.shape))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "(2, 1, 275)"


def test_build_export_train_are_lazy_functions_of_llmspec() -> None:
    spec = str(SPECS / "tiny-gpt.yaml")
    code = (
        "import sys, llmspec\n"
        "assert 'torch' not in sys.modules\n"
        f"model = llmspec.build({spec!r})\n"
        "import llmspec.builder, llmspec.exporter.pipeline, llmspec.trainer.loop\n"
        f"again = llmspec.build({spec!r})\n"
        "assert callable(llmspec.export) and callable(llmspec.train)\n"
        "assert llmspec.export.__module__ == 'llmspec.exporter.pipeline'\n"
        "from llmspec import build, generate_source\n"
        f"assert build({spec!r}) is not None and generate_source({spec!r}).startswith('# Gen')\n"
        "print(type(model).__name__, type(again).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["TinyGptForCausalLM", "TinyGptForCausalLM"]
