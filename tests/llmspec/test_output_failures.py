"""Writing outputs: a full disk or a read-only folder is one clear line (what, where, what to do,
exit 1), never a traceback; the previous output survives and no temporary file or staging
directory is left. ``export --force`` onto a symbolic link replaces the directory it points to
and keeps the link; staging directories that killed processes left are cleaned, and only
those. Every file written gets the same permissions, 0o666 less the umask.

Tests run as root, for whom a read-only folder made with chmod is writable; the operating
system's refusals are therefore raised by patching the call that meets them.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspec import files
from llmspec.cli import main
from llmspec.files import OutputError, publish_directory, staging_directory, write_atomic
from runtime import artifact as fmt

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
# What safetensors (Rust) raises when the disk fills
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
SENTENCES = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog."] * 40

# What each refusal says, and a word of what to do about it.
ADVICE = {
    errno.ENOSPC: ("No space left on device", "free space"),
    errno.EDQUOT: ("Disk quota exceeded", "quota"),
    errno.EROFS: ("Read-only file system", "writable disk"),
    errno.EACCES: ("Permission denied", "folder you can write to"),
}


def refusal(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def debris(folder: Path) -> list[str]:
    """Temporary files and staging directories under ``folder``."""
    return sorted(
        p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial", ".fp32"))
    )


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``llmspec ARGV``; (exit status, stderr), checking that stderr has no traceback."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Set the process's umask for the test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def host() -> str:
    return files._owner().split("-")[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


# ----------------------------------------------------------------------------------------
# Single files: schema, tokenizer, codegen, estimate --plot, attention


def _single_file_verbs(out: Path) -> dict[str, list[str]]:
    spec = str(SPECS / "tiny-gpt.yaml")
    return {
        "schema": ["schema", "-o", str(out)],
        "tokenizer": ["tokenizer", spec, "-o", str(out)],
        "codegen": ["codegen", spec, "-o", str(out)],
        "estimate": ["estimate", spec, "--plot", str(out)],
        "attention": ["attention", spec, "--text", "hi there", "-o", str(out)],
    }


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("verb", ["schema", "tokenizer", "codegen", "estimate", "attention"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_survives(
    verb: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    out = tmp_path / "out.file"
    out.write_bytes(b"the previous output")
    argv = _single_file_verbs(out)[verb]

    def full(fd: int) -> None:  # the disk fills while the temporary file is written
        raise refusal(code)

    monkeypatch.setattr("os.fsync", full)
    status, err = cli(argv, capsys)
    reason, advice = ADVICE[code]
    assert status == 1
    assert last_line(err).startswith(f"llmspec {verb}: cannot write {out}: {reason}; ")
    assert advice in last_line(err)
    assert out.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.file"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("verb", ["schema", "tokenizer", "codegen", "estimate", "attention"])
def test_a_read_only_folder_is_one_line_naming_the_file(
    verb: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    out = tmp_path / "out.file"
    argv = _single_file_verbs(out)[verb]

    real_mkstemp = tempfile.mkstemp

    def refused(*args: Any, **kwargs: Any) -> Any:  # creating the temporary file is refused
        if kwargs.get("dir") != tmp_path:  # another folder (the generated-code cache)
            return real_mkstemp(*args, **kwargs)
        raise OSError(code, os.strerror(code), str(tmp_path / ".out.file.1.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", refused)
    status, err = cli(argv, capsys)
    reason, advice = ADVICE[code]
    assert status == 1
    assert last_line(err).startswith(f"llmspec {verb}: cannot write {out}: {reason}; ")
    assert advice in last_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["schema", "codegen", "estimate"])
def test_a_directory_given_as_the_output_file_is_refused_and_left_alone(
    verb: str, tmp_path: Path, capsys
):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    status, err = cli(_single_file_verbs(folder)[verb], capsys)
    assert status == 1
    assert last_line(err) == (
        f"llmspec {verb}: cannot write {folder}: it is a directory; give the path of a file "
        "to write, for example one inside that directory"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["folder", "keep.txt"]


def test_a_pipe_or_a_link_loop_given_as_the_output_file_is_refused_without_waiting(
    tmp_path: Path, capsys
):
    os.mkfifo(tmp_path / "pipe")  # renaming over it would replace it; writing into it may hang
    status, err = cli(["schema", "-o", str(tmp_path / "pipe")], capsys)
    assert status == 1
    assert err.startswith(f"llmspec schema: cannot write {tmp_path / 'pipe'}: it is not a regular")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    status, err = cli(["codegen", str(SPECS / "tiny-gpt.yaml"), "-o", str(tmp_path / "a")], capsys)
    assert status == 1
    assert "Too many levels of symbolic links; its symbolic links point at each other" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "pipe"]
    assert (tmp_path / "pipe").is_fifo() and os.readlink(tmp_path / "a") == "b"


def test_an_output_file_that_is_a_link_is_written_where_it_points_and_the_link_kept(
    tmp_path: Path, capsys
):
    (tmp_path / "v1.json").write_text("old")
    (tmp_path / "current.json").symlink_to("v1.json")
    assert cli(["schema", "-o", str(tmp_path / "current.json")], capsys)[0] == 0
    assert os.readlink(tmp_path / "current.json") == "v1.json"
    assert (tmp_path / "v1.json").read_text().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.json", "v1.json"]


def test_an_output_in_a_missing_folder_says_to_create_it(tmp_path: Path, capsys):
    out = tmp_path / "missing" / "schema.json"
    status, err = cli(["schema", "-o", str(out)], capsys)
    assert status == 1
    assert err == (
        f"llmspec schema: cannot write {out}: No such file or directory; its folder does not "
        "exist; create it first or choose another path\n"
    )


def test_any_other_refusal_of_the_system_is_one_line_naming_the_path(tmp_path: Path, capsys):
    too_long = tmp_path / ("a" * 300)
    status, err = cli(["export", str(SPECS / "tiny-gpt.yaml"), "-o", str(too_long)], capsys)
    assert status == 1
    assert err == f"llmspec export: {too_long}: File name too long\n"


def test_the_api_raises_an_oserror_that_names_the_output(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("os.fsync", lambda fd: (_ for _ in ()).throw(refusal(errno.ENOSPC)))
    with pytest.raises(OSError) as raised:
        write_atomic(tmp_path / "f.txt", "text")
    assert isinstance(raised.value, OutputError)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "f.txt")
    assert str(raised.value).startswith(f"cannot write {tmp_path / 'f.txt'}: No space left")


def test_an_error_without_errno_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    # numpy's tofile (under torch.onnx.export) says only "problem writing element N to file"
    failure = OSError("problem writing element 13312 to file")
    monkeypatch.setattr(files, "_free_bytes", lambda path: 4096)
    error = OutputError.from_failure(tmp_path / "a", failure)
    assert error.errno == errno.ENOSPC
    assert "No space left on device (problem writing element 13312 to file; 4096 bytes" in str(
        error
    )
    monkeypatch.setattr(files, "_free_bytes", lambda path: 10**12)  # space left: say what it is
    error = OutputError.from_failure(tmp_path / "a", failure)
    assert error.errno is None
    assert str(error).startswith(f"cannot write {tmp_path / 'a'}: problem writing element")


def test_safetensors_and_torch_save_failures_are_read_for_their_cause(tmp_path: Path):
    from safetensors import SafetensorError

    rust = SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")
    with pytest.raises(OutputError) as raised, files.writing(tmp_path / "w"):
        raise rust
    assert raised.value.errno == errno.EDQUOT
    # torch.save raises a RuntimeError while cleaning up after the OSError of a write
    with pytest.raises(OutputError) as raised, files.writing(tmp_path / "o"):
        try:
            raise refusal(errno.ENOSPC)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(SafetensorError), files.writing(tmp_path / "x"):  # not a write: a bug
        raise SafetensorError("Error while serializing: invalid shape")


# ----------------------------------------------------------------------------------------
# Artifacts, run directories, imports


def test_export_onto_a_full_disk_keeps_the_old_artifact_and_leaves_nothing(
    tiny_artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from safetensors import SafetensorError

    target = tmp_path / "artifact"
    shutil.copytree(tiny_artifact("tiny-gpt", "fp32"), target)
    before = contents(target)

    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr("safetensors.torch.save_file", full)
    spec = str(SPECS / "tiny-gpt.yaml")
    status, err = cli(["export", spec, "-o", str(target), "--force"], capsys)
    assert status == 1
    assert last_line(err).startswith(
        f"llmspec export: cannot write {target}: No space left on device; free space"
    )
    assert contents(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert debris(tmp_path) == []


def test_export_into_a_read_only_folder_says_so_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    real_mkdtemp = tempfile.mkdtemp

    def refused(*args: Any, **kwargs: Any) -> str:
        if kwargs.get("dir") != tmp_path:
            return real_mkdtemp(*args, **kwargs)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".a.partial"))

    monkeypatch.setattr("tempfile.mkdtemp", refused)
    target = tmp_path / "artifact"
    status, err = cli(["export", str(SPECS / "tiny-gpt.yaml"), "-o", str(target)], capsys)
    assert status == 1
    assert last_line(err) == (
        f"llmspec export: cannot write {target}: Read-only file system; choose a folder on a "
        "writable disk"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_graph_that_cannot_be_written_is_a_write_error_not_an_export_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from llmspec.exporter.pipeline import export

    def full(plan: Any, directory: Path) -> Path:
        (directory / plan.file).write_bytes(b"half a graph")
        raise OSError("problem writing element 13312 to file")

    monkeypatch.setattr("llmspec.exporter.pipeline.export_graph", full)
    monkeypatch.setattr(files, "_free_bytes", lambda path: 0)
    target = tmp_path / "artifact"
    with pytest.raises(OSError) as raised:
        export(SPECS / "tiny-gpt.yaml", target, progress=lambda line: None)
    assert isinstance(raised.value, OutputError)
    assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_train_with_a_full_disk_keeps_the_earlier_checkpoints(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    import torch

    real_save = torch.save
    calls = {"n": 0}

    def filling(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's optimizer state
            raise refusal(errno.ENOSPC)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling)
    run = tmp_path / "run"
    argv = ["train", str(SPECS / "tiny-decoder.yaml"), "--data", str(corpus), "-o", str(run)]
    argv += ["--steps", "2", "--checkpoint-every", "1", "--batch-size", "2", "--seq-len", "16"]
    status, err = cli([*argv, "--quiet"], capsys)
    assert status == 1
    assert err == (
        f"llmspec train: cannot write {run / 'checkpoints' / 'step-00000002'}: No space left on "
        "device; free space on that disk (or raise your quota), or write to another disk\n"
    )
    kept = run / "checkpoints" / "step-00000001"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    assert sorted(p.name for p in kept.iterdir()) == [
        "optimizer.pt",
        "state.json",
        "weights.safetensors",
    ]
    assert debris(run) == []


def test_train_says_when_the_loss_plot_cannot_be_written(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    real_replace = os.replace

    def read_only_plot(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst).name == "loss.png":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr("os.replace", read_only_plot)
    run = tmp_path / "run"
    argv = ["train", str(SPECS / "tiny-decoder.yaml"), "--data", str(corpus), "-o", str(run)]
    argv += ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--quiet"]
    status, err = cli(argv, capsys)
    assert status == 1
    assert err == (
        f"llmspec train: cannot write {run / 'loss.png'}: Read-only file system; choose a "
        "folder on a writable disk\n"
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]
    assert debris(run) == []


def test_train_says_when_the_metrics_cannot_be_appended(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from llmspec.trainer.loop import _Run

    class FullDisk:
        def write(self, text: str) -> int:
            raise refusal(errno.ENOSPC)

        def flush(self) -> None:
            raise refusal(errno.ENOSPC)

        def close(self) -> None:
            raise refusal(errno.ENOSPC)  # closing flushes again: must not hide the first error

    monkeypatch.setattr(_Run, "_open_metrics", lambda self, start: FullDisk())
    run = tmp_path / "run"
    argv = ["train", str(SPECS / "tiny-decoder.yaml"), "--data", str(corpus), "-o", str(run)]
    status, err = cli([*argv, "--steps", "1", "--batch-size", "2", "--seq-len", "16"], capsys)
    assert status == 1
    assert last_line(err).startswith(
        f"llmspec train: cannot write {run / 'metrics.jsonl'}: No space left on device; "
    )


def test_train_into_a_folder_it_may_not_create_says_so(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    run = tmp_path / "run"
    real_mkdir = Path.mkdir

    def forbidden(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == run:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", forbidden)
    argv = ["train", str(SPECS / "tiny-decoder.yaml"), "--data", str(corpus), "-o", str(run)]
    status, err = cli([*argv, "--steps", "1", "--quiet"], capsys)
    assert status == 1
    assert err == (
        f"llmspec train: cannot write {run}: Permission denied; you may not write there; "
        "choose a folder you can write to\n"
    )


def test_under_torchrun_a_failed_write_of_process_0_ends_every_process_without_a_traceback(
    corpus: Path, tmp_path: Path
):
    from llmspec.trainer.loop import train

    settings: dict[str, Any] = {"steps": 1, "batch_size": 4, "seq_len": 16, "progress": False}
    run = train(SPECS / "tiny-decoder.yaml", [corpus], tmp_path / "run", **settings)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("in the way")  # process 0 cannot make the folder
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "llmspec", "train", str(run)]
    command += ["--data", str(corpus), "-o", str(run), "--resume", "--strategy", "ddp", "--quiet"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("llmspec train:")]
    assert ours == [
        f"llmspec train: cannot write {run / 'checkpoints'}: File exists; something else is "
        "in the way there; move it or choose another path"
    ]
    assert "[rank1]" not in done.stderr and "[rank0]" not in done.stderr  # no worker traceback
    assert (run / "checkpoints").read_text() == "in the way"


def test_train_into_a_file_says_it_is_not_a_directory(corpus: Path, tmp_path: Path, capsys):
    (tmp_path / "run").write_text("not a run")
    argv = ["train", str(SPECS / "tiny-decoder.yaml"), "--data", str(corpus)]
    status, err = cli([*argv, "-o", str(tmp_path / "run"), "--steps", "1", "--quiet"], capsys)
    assert status == 1
    assert err == (
        f"llmspec train: {tmp_path / 'run'} exists and is not a directory; choose a new run "
        "directory\n"
    )
    assert (tmp_path / "run").read_text() == "not a run"


def test_import_hf_onto_a_full_disk_keeps_the_old_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    import hf_tiny  # tests/hf_tiny.py
    from safetensors import SafetensorError

    hf_tiny.gpt2(tmp_path / "hf")
    out = tmp_path / "out"
    assert main(["import-hf", str(tmp_path / "hf"), "-o", str(out)]) == 0
    before = contents(out)

    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr("safetensors.torch.save_file", full)
    status, err = cli(["import-hf", str(tmp_path / "hf"), "-o", str(out), "--force"], capsys)
    assert status == 1
    assert last_line(err).startswith(f"llmspec import-hf: cannot write {out}: No space left")
    assert contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


def test_import_hf_force_onto_a_symlink_replaces_its_directory_and_keeps_the_link(
    tmp_path: Path,
):
    import hf_tiny  # tests/hf_tiny.py

    from llmspec.importers.hf.importer import HFImportError, import_hf

    hf_tiny.gpt2(tmp_path / "hf")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "old.txt").write_text("the previous import")
    (tmp_path / "current").symlink_to("v1")
    with pytest.raises(HFImportError, match="already exists; pass --force"):
        import_hf(tmp_path / "hf", tmp_path / "current")
    import_hf(tmp_path / "hf", tmp_path / "current", force=True)
    assert os.readlink(tmp_path / "current") == "v1"
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [
        "spec.yaml",
        "tokenizer.json",
        "weights.safetensors",
    ]
    (tmp_path / "nothing").symlink_to("gone")
    with pytest.raises(HFImportError, match="symbolic link to something that is not a dir"):
        import_hf(tmp_path / "hf", tmp_path / "nothing", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "hf", "nothing", "v1"]


# ----------------------------------------------------------------------------------------
# export --force onto a symbolic link; stale staging directories


@pytest.fixture(scope="module")
def deployment(tiny_artifact, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``current -> v1``, with v1 an artifact of tiny-gpt and, beside it, the staging
    directory of a killed export of v1; then ``llmspec export tiny-decoder -o current --force``
    under umask 0o027."""
    root = tmp_path_factory.mktemp("deployment")
    shutil.copytree(tiny_artifact("tiny-gpt", "fp32"), root / "v1")
    (root / "current").symlink_to("v1")
    killed = root / f".v1.{dead_pid()}-{host()}.k1ll3d00.partial"
    killed.mkdir()
    (killed / "decoder.onnx.data").write_bytes(b"half")
    old = os.umask(0o027)
    try:
        argv = ["export", str(SPECS / "tiny-decoder.yaml"), "-o", str(root / "current")]
        status = main([*argv, "--force"])
    finally:
        os.umask(old)
    return {"root": root, "status": status, "killed": killed}


def test_export_force_onto_a_symlink_replaces_its_directory_and_keeps_the_link(deployment):
    root = deployment["root"]
    assert deployment["status"] == 0
    assert (root / "current").is_symlink() and os.readlink(root / "current") == "v1"
    manifest = fmt.read_manifest(root / "v1")
    assert manifest.name == "tiny-decoder"
    fmt.verify_files(root / "v1", manifest)
    assert sorted(p.name for p in root.iterdir()) == ["current", "v1"]


def test_an_export_removes_the_staging_directory_a_killed_export_left(deployment):
    assert deployment["status"] == 0
    assert not deployment["killed"].exists()


def test_every_file_of_an_artifact_gets_0666_less_the_umask(deployment):
    artifact = deployment["root"] / "v1"
    modes = {p.name: p.stat().st_mode & 0o777 for p in artifact.iterdir()}
    assert "weights.safetensors" in modes and "decoder.onnx.data" in modes
    assert modes == dict.fromkeys(modes, 0o640)
    assert artifact.stat().st_mode & 0o777 == 0o750


def test_export_onto_a_link_to_nothing_is_refused_and_the_link_kept(tmp_path: Path, capsys):
    (tmp_path / "current").symlink_to("v2")
    argv = ["export", str(SPECS / "tiny-gpt.yaml"), "-o", str(tmp_path / "current"), "--force"]
    status, err = cli(argv, capsys)
    assert status == 1
    assert err == (
        f"llmspec export: {tmp_path / 'current'} is a symbolic link to v2, which does not "
        "exist; point it at an artifact directory, or remove it\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]
    assert (tmp_path / "current").is_symlink()


def test_export_onto_a_link_to_a_folder_that_is_no_artifact_is_refused(tmp_path: Path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"cat")
    (tmp_path / "current").symlink_to("photos")
    argv = ["export", str(SPECS / "tiny-gpt.yaml"), "-o", str(tmp_path / "current"), "--force"]
    status, err = cli(argv, capsys)
    assert status == 1
    assert "is not an artifact; refusing to replace it" in err
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"cat"


def test_publishing_onto_a_symlink_swaps_the_directory_it_points_to(tmp_path: Path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "a.txt").write_text("old")
    (tmp_path / "current").symlink_to("v1")
    with files.publishing(tmp_path / "current", replace=True) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".v1.")
        (staged / "a.txt").write_text("new")
    assert os.readlink(tmp_path / "current") == "v1"
    assert (tmp_path / "v1" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]


def test_only_our_dead_processes_staging_directories_are_removed(tmp_path: Path):
    dead, ours, me = dead_pid(), host(), os.getpid()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep")
    names = {
        "dead, this machine": (f".artifact.{dead}-{ours}.abc12345.partial", False),
        "running (this process)": (f".artifact.{me}-{ours}.abc12345.partial", True),
        "another machine": (f".artifact.{dead}-00000000.abc12345.partial", True),
        "an older llmspec's name": (".artifact.abc12345.partial", True),
        "another output's": (f".artifact2.{dead}-{ours}.abc12345.partial", True),
        "not a staging name": (f"artifact.{dead}-{ours}.abc12345.partial", True),
    }
    for name, _ in names.values():
        (tmp_path / name).mkdir()
    link = tmp_path / f".artifact.{dead}-{ours}.link0000.partial"
    link.symlink_to(precious)
    staged = staging_directory(tmp_path / "artifact")
    for what, (name, kept) in names.items():
        assert (tmp_path / name).exists() == kept, what
    assert link.is_symlink() and (precious / "data").read_text() == "keep"
    assert staged.exists() and staged.name.startswith(f".artifact.{me}-{ours}.")


def test_a_temporary_file_a_killed_write_left_is_removed_by_the_next(tmp_path: Path):
    dead, ours = dead_pid(), host()
    stale = tmp_path / f".schema.json.{dead}-{ours}.x1y2z3w4.tmp"
    stale.write_text("half")
    alive = tmp_path / f".schema.json.{os.getpid()}-{ours}.x1y2z3w4.tmp"
    alive.write_text("being written")
    write_atomic(tmp_path / "schema.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "schema.json"]


def test_training_again_removes_the_checkpoint_a_killed_run_left(corpus: Path, tmp_path: Path):
    from llmspec.trainer.loop import train

    settings: dict[str, Any] = {"steps": 1, "batch_size": 2, "seq_len": 16, "progress": False}
    run = train(SPECS / "tiny-decoder.yaml", [corpus], tmp_path / "run", **settings)
    killed = run / "checkpoints" / f".step-00000002.{dead_pid()}-{host()}.abcdefgh.partial"
    killed.mkdir()
    running = run / "checkpoints" / f".step-00000002.{os.getpid()}-{host()}.abcdefgh.partial"
    running.mkdir()
    train(SPECS / "tiny-decoder.yaml", [corpus], run, resume=True, **settings)
    assert not killed.exists() and running.exists()


# ----------------------------------------------------------------------------------------
# Permissions


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_published_files_get_0666_less_the_umask_whatever_wrote_them(
    mask: int, tmp_path: Path, umask
):
    umask(mask)
    staged = staging_directory(tmp_path / "artifact")
    (staged / "weights.safetensors").write_bytes(b"w")
    (staged / "weights.safetensors").chmod(0o600)  # as safetensors and ONNX external data do
    (staged / "sub").mkdir(mode=0o700)
    (staged / "sub" / "x.onnx.data").write_bytes(b"d")
    (staged / "sub" / "x.onnx.data").chmod(0o600)
    (staged / "model.py").write_text("")
    (staged / "model.py").chmod(0o755)
    publish_directory(staged, tmp_path / "artifact", replace=False)
    target = tmp_path / "artifact"
    assert {p.stat().st_mode & 0o777 for p in target.rglob("*") if p.is_file()} == {0o666 & ~mask}
    assert {p.stat().st_mode & 0o777 for p in [target, target / "sub"]} == {0o777 & ~mask}
    write_atomic(tmp_path / "single.json", "{}")
    assert (tmp_path / "single.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_every_file_of_a_run_directory_gets_0666_less_the_umask(
    corpus: Path, tmp_path: Path, umask
):
    from llmspec.trainer.loop import train

    umask(0o027)
    settings: dict[str, Any] = {"steps": 1, "batch_size": 2, "seq_len": 16, "progress": False}
    run = train(SPECS / "tiny-decoder.yaml", [corpus], tmp_path / "run", **settings)
    modes = {str(p.relative_to(run)): p.stat().st_mode & 0o777 for p in run.rglob("*")}
    written = {name: mode for name, mode in modes.items() if (run / name).is_file()}
    assert "checkpoints/step-00000001/weights.safetensors" in written
    assert written == dict.fromkeys(written, 0o640)
