"""Training: every objective learns, runs resume exactly after a kill, checkpoints are atomic,
DDP and FSDP match one process, and the memory estimate matches what a step takes."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import llmspec
from llmspec.loader import load_spec
from llmspec.tokenizer import load_for_spec
from llmspec.train import (
    CHECKPOINTS,
    TrainError,
    add_train_arguments,
    checkpoint_dirs,
    lr_factor,
    read_metrics,
    train,
    train_command,
)

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
SMALL = {"batch_size": 4, "seq_len": 32, "progress": False}

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Every good boy deserves fruit!",
    "Where is the small red ball?",
    "The dog ran far away from the big blue house.",
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """Tiny models train faster on one thread than on two (and far faster when the machine is
    busy); subprocesses get one thread too, so that their numbers equal in-process ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two documents of repeated sentences."""
    root = tmp_path_factory.mktemp("corpus")
    for index in range(2):
        lines = [SENTENCES[(i * 3 + index) % len(SENTENCES)] for i in range(60)]
        (root / f"doc{index}.txt").write_text("\n".join(lines) + "\n")
    return root


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def eval_losses(run: Path) -> list[float]:
    return [r["eval_loss"] for r in read_metrics(run / "metrics.jsonl") if "eval_loss" in r]


# ----------------------------------------------------------------------------------------
# One process


@pytest.mark.parametrize("name", ["tiny-decoder", "tiny-encoder", "tiny-t5", "tiny-bart"])
def test_every_objective_trains_with_decreasing_loss(name: str, corpus: Path, tmp_path: Path):
    run = train(
        SPECS / f"{name}.yaml",
        [corpus],
        tmp_path / "run",
        steps=16,
        lr=2e-3,
        eval_every=8,
        checkpoint_every=16,
        **SMALL,
    )
    curve = losses(run)
    assert len(curve) == 16
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4 - 0.5
    held_out = eval_losses(run)
    assert len(held_out) == 2 and held_out[1] < held_out[0]
    # The run directory is what export reads: spec.yaml and weights that load strictly.
    spec = load_spec(run / "spec.yaml")
    assert spec == load_spec(SPECS / f"{name}.yaml")
    llmspec.build(spec, weights=run / "weights.safetensors")
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_for_spec(spec, run).to_str() == (run / "tokenizer.json").read_text()
    assert [p.name for p in checkpoint_dirs(run)] == ["step-00000016"]


def test_a_run_directory_continues_from_its_weights(corpus: Path, tmp_path: Path):
    first = train(SPECS / "tiny-decoder.yaml", [corpus], tmp_path / "a", steps=16, lr=2e-3, **SMALL)
    second = train(first, [corpus], tmp_path / "b", steps=2, lr=1e-5, **SMALL)
    assert losses(second)[0] < losses(first)[0] - 0.5
    assert abs(losses(second)[0] - losses(first)[-1]) < 0.3


def test_a_bpe_spec_trains_its_tokenizer_and_the_run_stands_alone(corpus: Path, tmp_path: Path):
    spec_text = (SPECS / "tiny-decoder.yaml").read_text()
    spec_text = spec_text.replace(
        "  size: 260\n",
        "  size: 300\n  tokenizer: {type: bpe, corpus: [corpus/doc0.txt], min_frequency: 2}\n",
    )
    (tmp_path / "corpus").symlink_to(corpus)
    (tmp_path / "bpe.yaml").write_text(spec_text)
    run = train(tmp_path / "bpe.yaml", [corpus], tmp_path / "run", steps=2, **SMALL)
    spec = load_spec(run / "spec.yaml")
    assert spec.vocabulary.tokenizer.model_dump() == {"type": "file", "path": "tokenizer.json"}
    tokenizer = load_for_spec(spec, run)
    assert tokenizer.get_vocab_size() == 300
    assert len(tokenizer.encode(SENTENCES[0]).ids) < len(SENTENCES[0].encode())  # merges learned


def test_bf16_and_fp16_specs_train_on_cpu(corpus: Path, tmp_path: Path, capsys):
    for dtype in ("bf16", "fp16"):
        text = (SPECS / "tiny-decoder.yaml").read_text() + f"precision: {{dtype: {dtype}}}\n"
        (tmp_path / f"{dtype}.yaml").write_text(text)
        run = train(
            tmp_path / f"{dtype}.yaml",
            [corpus],
            tmp_path / dtype,
            steps=2,
            batch_size=2,
            seq_len=32,
        )
        assert len(losses(run)) == 2
    assert "fp16 autocast needs CUDA" in capsys.readouterr().err


def test_warmup_then_cosine_decay():
    assert lr_factor(0, 4, 20) == 0.25 and lr_factor(3, 4, 20) == 1.0
    assert lr_factor(4, 4, 20) == 1.0
    assert lr_factor(12, 4, 20) == pytest.approx(0.55)
    assert lr_factor(20, 4, 20) == pytest.approx(0.1)
    assert lr_factor(0, 0, 1) == 1.0


def test_bad_runs_are_refused_before_training(corpus: Path, tmp_path: Path, monkeypatch):
    spec = SPECS / "tiny-decoder.yaml"
    with pytest.raises(TrainError, match="data not found: .*missing"):
        train(spec, [tmp_path / "missing"], tmp_path / "run", steps=1, **SMALL)
    with pytest.raises(TrainError, match="seq_len 512 exceeds the spec's context_length 256"):
        train(spec, [corpus], tmp_path / "run", steps=1, batch_size=2, seq_len=512)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(TrainError, match="exists and is not empty"):
        train(spec, [corpus], tmp_path / "full", steps=1, **SMALL)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="needs --strategy ddp or fsdp"):
        train(spec, [corpus], tmp_path / "run", steps=1, **SMALL)


def test_the_command_line_reports_bad_input_with_status_1(corpus: Path, tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    spec = str(SPECS / "tiny-decoder.yaml")
    args = parser.parse_args([spec, "--data", str(tmp_path / "none"), "-o", str(tmp_path / "r")])
    assert train_command(args) == 1
    assert "llmspec train: data not found" in capsys.readouterr().err
    argv = [spec, "--data", str(corpus), "-o", str(tmp_path / "r"), "--steps", "1"]
    args = parser.parse_args([*argv, "--batch-size", "2", "--seq-len", "16", "--quiet"])
    assert train_command(args) == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--lr", "-1"])


# ----------------------------------------------------------------------------------------
# Resume and atomicity

RESUMABLE = {"steps": 8, "lr": 2e-3, "eval_every": 3, "checkpoint_every": 3, "seed": 3}


def test_resume_after_sigkill_continues_the_loss_curve_exactly(corpus: Path, tmp_path: Path):
    spec = SPECS / "tiny-encoder.yaml"  # dropout and random masking: every RNG matters
    reference = train(spec, [corpus], tmp_path / "reference", **RESUMABLE, **SMALL)

    killed = tmp_path / "killed"
    code = textwrap.dedent(
        f"""
        from llmspec.train import train
        train({str(spec)!r}, [{str(corpus)!r}], {str(killed)!r}, progress=False,
              **{RESUMABLE!r}, batch_size=4, seq_len=32)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        # Kill between checkpoints: after step 4, with the step-3 checkpoint written.
        while not any(r["step"] >= 4 for r in read_metrics(killed / "metrics.jsonl")):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "weights.safetensors").exists()
    survivors = checkpoint_dirs(killed)
    assert survivors and all(
        {p.name for p in c.iterdir()} == {"weights.safetensors", "optimizer.pt", "state.json"}
        for c in survivors
    )

    train(spec, [corpus], killed, resume=True, **SMALL)
    assert losses(killed) == pytest.approx(losses(reference), abs=1e-5)
    assert eval_losses(killed) == pytest.approx(eval_losses(reference), abs=1e-5)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))


def test_resume_refuses_other_settings(corpus: Path, tmp_path: Path):
    run = train(SPECS / "tiny-decoder.yaml", [corpus], tmp_path / "run", steps=2, **SMALL)
    with pytest.raises(TrainError, match=r"lr 0.1 \(the run has 0.0003\)"):
        train(SPECS / "tiny-decoder.yaml", [corpus], run, resume=True, lr=0.1, **SMALL)
    with pytest.raises(TrainError, match="different spec"):
        train(SPECS / "tiny-gpt.yaml", [corpus], run, resume=True, **SMALL)
    (tmp_path / "other.txt").write_text("something else entirely. " * 50)
    with pytest.raises(TrainError, match="the data changed"):
        train(SPECS / "tiny-decoder.yaml", [tmp_path / "other.txt"], run, resume=True, **SMALL)


def test_a_failed_checkpoint_leaves_the_previous_ones_and_no_partial_one(
    corpus: Path, tmp_path: Path, monkeypatch
):
    import torch

    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's optimizer state
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    spec = SPECS / "tiny-decoder.yaml"
    settings = {"steps": 6, "checkpoint_every": 3, **SMALL}
    with pytest.raises(OSError, match="No space left"):
        train(spec, [corpus], tmp_path / "run", **settings)
    root = tmp_path / "run" / CHECKPOINTS
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003"]
    monkeypatch.setattr(torch, "save", real_save)
    train(spec, [corpus], tmp_path / "run", resume=True, **settings)
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == [
        "step-00000003",
        "step-00000006",
    ]
    assert len(losses(tmp_path / "run")) == 6
