"""Attention maps: the recorded weights are the ones the generated model computes.

What is compared: the weights recorded through the generated module's ``masked_softmax`` against
a reference recomputed here from a layer's own ``q_proj``/``k_proj`` weights applied to the input
that reached the attention module (captured with a forward pre-hook), softmax(q k^T / sqrt(hs))
over the causal mask, in float64; plus the structural properties (rows sum to 1 over the keys a
query may see, masked cells exactly 0, bidirectional encoder), unchanged logits, restoration of
``masked_softmax`` after a failing forward, and the CLI.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmspec.builder import build, load_module
from llmspec.cli import main
from llmspec.inspect.attention_maps import attention_maps, attention_weights, recording
from llmspec.spec.loading import load_spec

ROOT = Path(__file__).resolve().parents[3]
SPECS = {name: ROOT / "specs" / f"{name}.yaml" for name in ("tiny-gpt", "tiny-encoder", "tiny-t5")}
PNG = b"\x89PNG\r\n\x1a\n"


def _model(name: str):
    spec = load_spec(SPECS[name])
    torch.manual_seed(0)
    return load_module(spec), build(spec, dtype="fp32").eval()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, 200, (1, n), generator=generator)


def _check_rows(maps) -> None:
    for key, m in maps.items():
        assert m.weights.shape == m.allowed.shape, key
        live = m.allowed.any(-1)  # a padding query whose keys are all masked is left out
        assert live.any(), key
        np.testing.assert_allclose((m.weights * m.allowed).sum(-1)[live], 1.0, atol=1e-5)
        masked = ~m.allowed & live[..., None]
        assert (m.weights[masked] == 0).all(), key


def test_rows_sum_to_one_and_masked_cells_are_zero_with_padding():
    module, model = _model("tiny-gpt")
    maps = attention_maps(module, model, _ids(7), torch.tensor([[0, 0, 1, 1, 1, 1, 1]]))
    assert set(maps) == {("decoder", 0, "self"), ("decoder", 1, "self")}
    _check_rows(maps)
    weights = maps[("decoder", 0, "self")].weights
    assert weights.shape == (4, 7, 7)
    assert (weights[:, 2:, :2] == 0).all()  # padding keys
    assert (np.triu(weights[:, 2:, 2:], 1) == 0).all()  # future keys

    module, model = _model("tiny-encoder")
    maps = attention_maps(module, model, _ids(7), torch.tensor([[1, 1, 1, 1, 1, 0, 0]]))
    assert set(maps) == {("encoder", 0, "self"), ("encoder", 1, "self")}
    _check_rows(maps)
    assert (maps[("encoder", 1, "self")].weights[:, :, 5:] == 0).all()

    module, model = _model("tiny-t5")
    maps = attention_maps(
        module, model, _ids(6), torch.tensor([[1, 1, 1, 1, 0, 0]]), decoder_input_ids=_ids(5, 2)
    )
    assert set(maps) == {
        ("encoder", 0, "self"),
        ("encoder", 1, "self"),
        ("decoder", 0, "self"),
        ("decoder", 0, "cross"),
        ("decoder", 1, "self"),
        ("decoder", 1, "cross"),
    }
    _check_rows(maps)
    assert maps[("decoder", 0, "cross")].weights.shape == (4, 5, 6)
    assert (maps[("decoder", 1, "cross")].weights[:, :, 4:] == 0).all()
    assert (np.triu(maps[("decoder", 1, "self")].weights, 1) == 0).all()


def test_encoder_self_attention_is_bidirectional_decoder_is_causal():
    module, model = _model("tiny-encoder")
    above = np.triu(np.ones((8, 8), dtype=bool), 1)
    for key, w in attention_weights(module, model, _ids(8)).items():
        assert (w[:, above] > 0).all(), key  # every later key is seen
    module, model = _model("tiny-gpt")
    for key, w in attention_weights(module, model, _ids(8)).items():
        assert (w[:, above] == 0).all() and (w[:, ~above] > 0).all(), key


def test_recorded_weights_equal_a_reference_recomputed_from_the_layer_weights():
    module, model = _model("tiny-gpt")
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.self_attn.register_forward_pre_hook(
            lambda _m, args, i=i: inputs.__setitem__(i, args[0].detach())
        )
        for i, layer in enumerate(model.decoder.layers)
    ]
    try:
        weights = attention_weights(module, model, _ids(9))
    finally:
        for handle in handles:
            handle.remove()
    nh, hs, T = 4, 16, 9
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i, layer in enumerate(model.decoder.layers):
        attn = layer.self_attn
        x = inputs[i].double()
        with torch.no_grad():
            q = F.linear(x, attn.q_proj.weight.double(), attn.q_proj.bias.double())
            k = F.linear(x, attn.k_proj.weight.double(), attn.k_proj.bias.double())
        q = q.view(1, T, nh, hs).transpose(1, 2)
        k = k.view(1, T, nh, hs).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / hs**0.5
        reference = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)[0]
        recorded = weights[("decoder", i, "self")]
        assert recorded.shape == (nh, T, T)
        np.testing.assert_allclose(recorded, reference.numpy(), rtol=0, atol=1e-6)


def test_recording_leaves_the_outputs_unchanged():
    for name in ("tiny-gpt", "tiny-encoder", "tiny-t5"):
        module, model = _model(name)
        args = (_ids(6), None, _ids(4, 3)) if name == "tiny-t5" else (_ids(6),)
        with torch.no_grad():
            plain = model(*args).logits
            with recording(module, model) as maps:
                recorded = model(*args).logits
        assert maps and torch.equal(plain, recorded), name


def test_masked_softmax_and_hooks_are_restored_when_the_forward_raises():
    module, model = _model("tiny-gpt")
    original = module.masked_softmax
    attn = model.decoder.layers[1].self_attn

    def fail(*_):
        raise RuntimeError("boom")

    handle = attn.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            attention_weights(module, model, _ids(5))
    finally:
        handle.remove()
    assert module.masked_softmax is original
    assert not attn._forward_hooks and not attn._forward_pre_hooks
    assert not model.decoder.layers[0].self_attn._forward_pre_hooks


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-encoder", "tiny-t5"])
def test_cli_writes_a_png(name, tmp_path, capsys):
    out = tmp_path / "map.png"
    argv = ["attention", str(SPECS[name]), "--text", "a cat", "-o", str(out), "--layer", "1"]
    assert main([*argv, "--target", "hi"] if name == "tiny-t5" else argv) == 0
    assert out.read_bytes().startswith(PNG)
    assert "wrote" in capsys.readouterr().err


def test_cli_reads_a_model_directory(tmp_path):
    _, model = _model("tiny-gpt")
    from safetensors.torch import save_file

    (tmp_path / "spec.yaml").write_text(SPECS["tiny-gpt"].read_text())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.st")
    (tmp_path / "w.st").rename(tmp_path / "weights.safetensors")
    out = tmp_path / "one.png"
    argv = ["attention", str(tmp_path), "--text", "ab c", "--layer", "0", "--head", "3"]
    assert main([*argv, "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)


def test_cli_out_of_range_layer_or_head_exits_one(tmp_path, capsys):
    out = tmp_path / "map.png"
    spec = str(SPECS["tiny-gpt"])
    assert main(["attention", spec, "--text", "x", "--layer", "2", "-o", str(out)]) == 1
    assert "--layer 2 is out of range" in capsys.readouterr().err
    assert main(["attention", spec, "--text", "x", "--head", "-1", "-o", str(out)]) == 1
    assert "--head -1 is out of range" in capsys.readouterr().err
    enc = str(SPECS["tiny-encoder"])
    assert main(["attention", enc, "--text", "x", "--kind", "cross", "-o", str(out)]) == 1
    assert "no cross-attention" in capsys.readouterr().err
    assert not out.exists()
