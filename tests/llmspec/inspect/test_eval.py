"""``llmspec eval``: the objective's loss on ONNX Runtime equals the PyTorch model's loss of the
same weights on the same batches; the CLI's text and JSON; bad inputs exit 1."""

import json
import math
import shutil

import numpy as np
import pytest

from llmspec.cli import main
from llmspec.inspect.evaluate import evaluate, make_batches, score

TEXT = (
    "the model reads a spec and writes code for every layer of its network while the tests "
    "check shapes, masks and losses; an artifact runs anywhere with numpy."
)
WORDS = TEXT.split(" ")

SETTINGS = {"batch_size": 3, "seq_len": 48, "batches": 3, "seed": 7}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("eval") / "corpus.txt"
    lines = [" ".join(rng.choice(WORDS, size=10)) + "." for _ in range(40)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _torch_reference(artifact, corpus, causal):
    """Token-weighted mean loss, per-batch losses and accuracy from the PyTorch model."""
    import torch
    from tokenizers import Tokenizer

    import llmspec
    from llmspec.spec.loading import load_spec
    from llmspec.trainer.objectives import IGNORE, target_count, to_torch

    spec = load_spec(artifact / "spec.yaml")
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    batches = make_batches(spec, tokenizer, [corpus], **SETTINGS)
    model = llmspec.build(spec, weights=artifact / "weights.safetensors").eval()
    losses, counts, correct = [], [], 0
    with torch.no_grad():
        for batch in batches:
            out = model(**to_torch(batch))
            losses.append(float(out.loss))
            counts.append(target_count(batch, causal))
            logits, labels = out.logits, torch.from_numpy(batch["labels"])
            if causal:
                logits, labels = logits[:, :-1], labels[:, 1:]
            chosen = labels != IGNORE
            correct += int((logits[chosen].argmax(-1) == labels[chosen]).sum())
    total = sum(counts)
    return sum(x * n for x, n in zip(losses, counts, strict=True)) / total, losses, counts, correct


@pytest.mark.parametrize(
    ("name", "objective"),
    [("tiny-gpt", "causal-lm"), ("tiny-encoder", "masked-lm"), ("tiny-t5", "span-corruption")],
)
def test_eval_loss_equals_pytorch_loss(tiny_artifact, corpus, name, objective):
    artifact = tiny_artifact(name, "fp32")
    report = evaluate(artifact, [corpus], device="cpu", **SETTINGS)
    causal = objective == "causal-lm"
    loss, losses, counts, correct = _torch_reference(artifact, corpus, causal)

    assert report.objective == objective
    assert report.batches == SETTINGS["batches"] and report.sequences == 9
    assert report.batch_tokens == counts and report.tokens == sum(counts)
    assert report.loss == pytest.approx(loss, rel=1e-4)
    assert report.batch_losses == pytest.approx(losses, rel=1e-4)
    assert report.accuracy == pytest.approx(correct / sum(counts), abs=1.5 / sum(counts))
    if objective == "masked-lm":
        assert report.perplexity is None
    else:
        assert report.perplexity == pytest.approx(math.exp(loss), rel=1e-4)
    # Fixed seed, same batches, same numbers; another seed corrupts differently.
    again = evaluate(artifact, [corpus], device="cpu", **SETTINGS)
    assert again.batch_losses == report.batch_losses
    if objective != "causal-lm":
        other = evaluate(artifact, [corpus], device="cpu", **{**SETTINGS, "seed": 8})
        assert other.batch_losses != report.batch_losses


def test_score_ignores_padding_and_shifts_causal_labels():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    labels = np.array([[0, 1, -100]])
    nll, count, correct = score(logits, labels, causal=False)
    assert count == 2 and correct == 2
    assert nll == pytest.approx(-math.log(0.5) - math.log(0.8))
    # causal: position t against label t + 1 (the last position has nothing to predict)
    nll, count, correct = score(logits, np.array([[9, 2, 0]]), causal=True)
    assert count == 2 and correct == 0
    assert nll == pytest.approx(-math.log(0.25) - math.log(0.1))
    assert score(logits, np.full((1, 3), -100), causal=False) == (0.0, 0, 0)


def test_cli_text_and_json(tiny_artifact, corpus, capsys):
    artifact = str(tiny_artifact("tiny-gpt", "fp32"))
    args = ["eval", artifact, "--data", str(corpus), "--batch-size", "2", "--seq-len", "32"]
    assert main([*args, "--batches", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt (causal-lm) on cpu: 2 batches" in out
    assert "loss" in out and "perplexity" in out and "token accuracy" in out

    assert main([*args, "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["objective"] == "causal-lm" and data["batch_size"] == 2 and data["seq_len"] == 32
    assert data["batches"] == len(data["batch_losses"]) > 2  # without --batches: all the data
    assert data["perplexity"] == pytest.approx(math.exp(data["loss"]))
    assert 0 <= data["accuracy"] <= 1 and data["tokens"] == sum(data["batch_tokens"])


def test_cli_masked_lm_reports_accuracy_not_perplexity(tiny_artifact, corpus, capsys):
    artifact = str(tiny_artifact("tiny-encoder", "fp32"))
    assert main(["eval", artifact, "--data", str(corpus), "--batches", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "masked-token accuracy" in out and "perplexity" not in out


def test_bad_inputs_exit_one_with_a_message(tiny_artifact, corpus, tmp_path, capsys):
    artifact = tiny_artifact("tiny-gpt", "fp32")

    def fails(argv, message):
        assert main(["eval", *argv, "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err

    missing = tmp_path / "nope.txt"
    fails([str(artifact), "--data", str(missing)], f"data not found: {missing}")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails([str(artifact), "--data", str(empty)], "the data has no text")
    fails([str(tmp_path), "--data", str(corpus)], "manifest.json: missing")
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    (broken / "weights.safetensors").write_bytes(b"not weights")
    fails([str(broken), "--data", str(corpus)], "weights.safetensors")
    fails([str(artifact), "--data", str(corpus), "--seq-len", "4096"], "exceeds the model's")


def test_usage_errors_exit_two(tiny_artifact, corpus):
    artifact = str(tiny_artifact("tiny-gpt", "fp32"))
    for argv in (["eval", artifact], ["eval", artifact, "--data", str(corpus), "--batches", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
