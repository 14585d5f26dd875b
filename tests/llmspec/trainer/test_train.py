"""Training: every objective learns, runs resume exactly after a kill, checkpoints are atomic,
DDP and FSDP match one process, and the memory estimate matches what a step takes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import llmspec
from llmspec.cli import main
from llmspec.estimates.report import estimate
from llmspec.spec.loading import load_spec
from llmspec.tokenizer import load_for_spec
from llmspec.trainer.checkpoints import CHECKPOINTS, checkpoint_dirs
from llmspec.trainer.loop import train
from llmspec.trainer.optimization import lr_factor
from llmspec.trainer.progress import read_metrics
from llmspec.trainer.settings import TrainError

ROOT = Path(__file__).resolve().parents[3]
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
    run = llmspec.train(
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
    # A copy, not a symlink: files a spec names must lie inside its folder.
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "doc0.txt").write_bytes((corpus / "doc0.txt").read_bytes())
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
    spec = str(SPECS / "tiny-decoder.yaml")
    assert main(["train", spec, "--data", str(tmp_path / "none"), "-o", str(tmp_path / "r")]) == 1
    assert "llmspec train: data not found" in capsys.readouterr().err
    argv = ["train", spec, "--data", str(corpus), "-o", str(tmp_path / "r"), "--steps", "1"]
    assert main([*argv, "--batch-size", "2", "--seq-len", "16", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        main([*argv, "--lr", "-1"])


# ----------------------------------------------------------------------------------------
# Resume and atomicity

RESUMABLE = {"steps": 8, "lr": 2e-3, "eval_every": 3, "checkpoint_every": 3, "seed": 3}


def test_resume_after_sigkill_continues_the_loss_curve_exactly(corpus: Path, tmp_path: Path):
    spec = SPECS / "tiny-encoder.yaml"  # dropout and random masking: every RNG matters
    reference = train(spec, [corpus], tmp_path / "reference", **RESUMABLE, **SMALL)

    killed = tmp_path / "killed"
    code = textwrap.dedent(
        f"""
        from llmspec.trainer.loop import train
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


# ----------------------------------------------------------------------------------------
# Several processes: torchrun with gloo on CPU

DISTRIBUTED = {"steps": 6, "batch_size": 4, "seq_len": 32, "eval_every": 3, "checkpoint_every": 3}


def torchrun(spec: Path, corpus: Path, out: Path, *extra: str) -> None:
    """``torchrun --nproc-per-node 2 -m llmspec train ...``."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in DISTRIBUTED.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "llmspec", "train", str(spec)]
    command += ["--data", str(corpus), "-o", str(out), "--quiet", *options, *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def single_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single") / "run"
    return train(SPECS / "tiny-decoder.yaml", [corpus], out, progress=False, **DISTRIBUTED)


def drop_last_checkpoint(run: Path, into: Path) -> Path:
    """A copy of ``run`` as a kill after its second-to-last checkpoint would leave it."""
    shutil.copytree(run, into)
    shutil.rmtree(checkpoint_dirs(into)[-1])
    (into / "weights.safetensors").unlink()
    return into


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(
    strategy: str, single_run: Path, corpus: Path, tmp_path: Path
):
    from safetensors.torch import load_file

    run = tmp_path / strategy
    torchrun(SPECS / "tiny-decoder.yaml", corpus, run, f"--strategy={strategy}")
    assert losses(run) == pytest.approx(losses(single_run), abs=1e-4)
    assert eval_losses(run) == pytest.approx(eval_losses(single_run), abs=1e-4)
    ours, theirs = (
        load_file(run / "weights.safetensors"),
        load_file(single_run / "weights.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max() < 1e-4, name

    # Its checkpoints load on one process: resuming there continues the same curve.
    resumed = drop_last_checkpoint(run, tmp_path / "resumed")
    train(SPECS / "tiny-decoder.yaml", [corpus], resumed, resume=True, progress=False)
    assert losses(resumed) == pytest.approx(losses(run), abs=1e-4)


def test_a_single_process_checkpoint_resumes_sharded_on_two(
    single_run: Path, corpus: Path, tmp_path: Path
):
    resumed = drop_last_checkpoint(single_run, tmp_path / "resumed")
    torchrun(SPECS / "tiny-decoder.yaml", corpus, resumed, "--strategy=fsdp", "--resume")
    assert losses(resumed) == pytest.approx(losses(single_run), abs=1e-4)


@pytest.mark.parametrize(
    ("strategy", "name"),
    [("fsdp", "tiny-encoder"), ("fsdp", "tiny-t5"), ("fsdp", "tiny-bart"), ("ddp", "tiny-bart")],
)
def test_every_family_trains_under_a_strategy(
    strategy: str, name: str, corpus: Path, tmp_path: Path
):
    # A process group of one (no torchrun): the wrapping of each family, including
    # encoder-decoders whose decoder layers stay in FSDP's root unit, follows plain training.
    settings = {"steps": 3, "batch_size": 2, "seq_len": 32, "progress": False}
    plain = train(SPECS / f"{name}.yaml", [corpus], tmp_path / "plain", **settings)
    wrapped = train(
        SPECS / f"{name}.yaml", [corpus], tmp_path / strategy, strategy=strategy, **settings
    )
    assert losses(wrapped) == pytest.approx(losses(plain), abs=1e-5)


# ----------------------------------------------------------------------------------------
# Memory: the estimate against a measured step


def peak_tensor_bytes(spec_name: str, batch_size: int, seq_len: int) -> tuple[int, int]:
    """(the peak bytes of live tensors while building the model and its AdamW and taking one
    training step, measured with the profiler's memory events; ``llmspec estimate``'s training
    memory for the same step, DDP / one device)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    spec = load_spec(SPECS / f"{spec_name}.yaml")
    ids = torch.randint(0, 250, (batch_size, seq_len))
    extra = {"decoder_input_ids": ids} if spec.architecture == "encoder-decoder" else {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        model = llmspec.build(spec, dtype="fp32")
        optimizer = torch.optim.AdamW(model.parameters())
        model(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, **extra
        ).loss.backward()
        optimizer.step()
    events = profiler.profiler.kineto_results.events()
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    expected = estimate(spec, batch_size=batch_size, seq_len=seq_len).to_json()
    return peak, expected["training"]["strategies"]["ddp"]["total_bytes"]


@pytest.mark.parametrize(
    ("name", "batch_size", "seq_len"),
    [("tiny-decoder", 4, 128), ("tiny-encoder", 8, 128), ("tiny-bart", 4, 64)],
)
def test_the_training_memory_estimate_matches_a_measured_step(
    name: str, batch_size: int, seq_len: int
):
    # The estimate counts Korthikanti et al.'s activations for a plain 4h MLP plus 16 bytes of
    # model states per parameter; the measured peak of live tensors is 0.68 to 1.29 times it
    # over the tiny specs at 2x32 to 8x128 tokens (bench/train_memory.py). Below 1 mostly: the
    # generated models free some intermediates early; above 1 only with dropout on
    # (tiny-encoder, the largest case here). The margin asserted: measured within -40 % and
    # +35 % of the estimate.
    measured, estimated = peak_tensor_bytes(name, batch_size, seq_len)
    assert 0.6 * estimated <= measured <= 1.35 * estimated
