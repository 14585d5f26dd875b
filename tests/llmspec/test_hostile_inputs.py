"""Hostile input to the compiler: specs that reach for files outside their folder, files that
are not files (FIFOs, devices, directories) or are too large, corpora with giant lines, and
models too large for the machine. Each ends in our own error with a message, quickly, and
nothing the building machine's folders are called ends up in an artifact or a run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import llmspec.builder
import llmspec.estimates.memory
import llmspec.tokenizer
from llmspec.builder import ModelTooLarge, build
from llmspec.cli import main
from llmspec.errors import SpecError
from llmspec.estimates.counts import count_parameters
from llmspec.estimates.memory import build_bytes
from llmspec.estimates.units import human_bytes, human_count
from llmspec.importers.hf.importer import HFImportError, import_hf
from llmspec.prompts import PromptError, read_examples, read_template
from llmspec.spec.loading import load_spec
from llmspec.spec.sections import ModelSpec
from llmspec.tokenizer import (
    TokenizerMismatch,
    byte_level,
    load_for_spec,
    special_texts,
    train_bpe,
)
from llmspec.trainer.data import corpus_files, token_stream
from llmspec.trainer.loop import train
from llmspec.trainer.objectives import TokenIds
from llmspec.trainer.settings import TrainError
from runtime.memory import MachineMemory
from runtime.reading import iter_lines

SPECS = Path(__file__).resolve().parents[2] / "specs"
TINY = (SPECS / "tiny-gpt.yaml").read_text()
TEXT = "the quick brown fox jumps over the lazy dog; the lazy dog sleeps.\n"


@contextlib.contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def with_tokenizer(tokenizer: str, size: int = 300) -> str:
    """tiny-gpt's spec with another tokenizer (flow-style YAML) and vocabulary size."""
    return TINY.replace("  size: 258\n", f"  size: {size}\n  tokenizer: {tokenizer}\n")


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def file_tokenizer(path: Path) -> None:
    """A tokenizer.json that fits tiny-gpt's specials at vocabulary size 300."""
    spec = load_spec(with_tokenizer("{type: byte-level}"))
    path.write_text(byte_level(spec).to_str())


def bpe_trainer(spec: ModelSpec) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=spec.vocabulary.size,
        min_frequency=2,
        special_tokens=special_texts(spec),
        initial_alphabet=llmspec.tokenizer.byte_alphabet(),
        show_progress=False,
    )


# ----------------------------------------------------------------------------------------
# Paths in a spec stay inside its folder


@pytest.mark.parametrize(
    ("tokenizer", "field", "why"),
    [
        ("{type: bpe, corpus: [/etc/passwd]}", "vocabulary.tokenizer.corpus[0]", "absolute"),
        ("{type: bpe, corpus: [ok.txt, ../x.txt]}", "vocabulary.tokenizer.corpus[1]", "'..'"),
        ("{type: bpe, corpus: [a/../../x.txt]}", "vocabulary.tokenizer.corpus[0]", "'..'"),
        ("{type: file, path: /etc/tokenizer.json}", "vocabulary.tokenizer.path", "absolute"),
        ("{type: file, path: '..\\tokenizer.json'}", "vocabulary.tokenizer.path", "'..'"),
        ("{type: file, path: 'C:\\tokenizer.json'}", "vocabulary.tokenizer.path", "absolute"),
    ],
)
def test_spec_paths_that_are_absolute_or_climb_out_are_refused_naming_the_field(
    tokenizer: str, field: str, why: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(with_tokenizer(tokenizer))
    (problem,) = caught.value.problems
    assert f"{field}: " in str(problem) and why in problem.message
    assert "copy the file next to the spec" in problem.message


def test_a_symlink_out_of_the_spec_folder_is_refused_naming_the_field(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(TEXT * 20)
    file_tokenizer(outside / "tokenizer.json")
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "corpus.txt").symlink_to(outside / "secret.txt")
    (folder / "linked").symlink_to(outside)  # a folder link: every file below it is outside
    (folder / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    cases = [
        ("{type: bpe, corpus: [corpus.txt]}", "vocabulary.tokenizer.corpus[0]"),
        ("{type: bpe, corpus: [linked/secret.txt]}", "vocabulary.tokenizer.corpus[0]"),
        ("{type: file, path: tokenizer.json}", "vocabulary.tokenizer.path"),
        ("{type: file, path: linked/tokenizer.json}", "vocabulary.tokenizer.path"),
    ]
    for tokenizer, field in cases:
        spec = load_spec(with_tokenizer(tokenizer))
        with pytest.raises(TokenizerMismatch, match="leads outside the spec's folder") as caught:
            load_for_spec(spec, folder)
        assert str(caught.value).startswith(f"{field}: ")


def test_the_tokenizer_verb_refuses_an_escaping_corpus_with_exit_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secret.txt").write_text(TEXT * 20)
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "corpus.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "spec.yaml").write_text(with_tokenizer("{type: bpe, corpus: [corpus.txt]}"))
    out = tmp_path / "tokenizer.json"
    assert main(["tokenizer", str(folder / "spec.yaml"), "-o", str(out)]) == 1
    assert "leads outside the spec's folder" in capsys.readouterr().err
    assert not out.exists()
    (folder / "absolute.yaml").write_text(
        with_tokenizer(f"{{type: bpe, corpus: [{tmp_path / 'secret.txt'}]}}")
    )
    assert main(["tokenizer", str(folder / "absolute.yaml"), "-o", str(out)]) == 1
    assert "vocabulary.tokenizer.corpus[0]: " in capsys.readouterr().err


def test_files_below_the_spec_folder_and_links_inside_it_are_read(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text(TEXT * 50)
    (tmp_path / "same.txt").symlink_to(tmp_path / "data" / "corpus.txt")
    spec = load_spec(with_tokenizer("{type: bpe, corpus: [data/corpus.txt, same.txt]}"))
    assert load_for_spec(spec, tmp_path).get_vocab_size() <= 300


def test_an_artifact_records_no_folder_of_the_building_machine(tiny_artifact: Any) -> None:
    artifact = Path(tiny_artifact("tiny-gpt", "fp32"))
    folders = {str(artifact.parent), str(artifact.parent.resolve()), os.getcwd(), str(SPECS)}
    for path in artifact.iterdir():
        if path.suffix in (".json", ".yaml", ".md", ".py"):
            text = path.read_text(encoding="utf-8")
            assert not [f for f in folders if f in text], path.name


def test_data_named_on_the_command_line_may_lie_anywhere_and_the_run_records_no_folder(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere" / "texts"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.txt").write_text(TEXT * 40)
    (tmp_path / "single.txt").write_text(TEXT * 40)
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "corpus.txt").write_text(TEXT * 50)
    (folder / "spec.yaml").write_text(with_tokenizer("{type: bpe, corpus: [corpus.txt]}"))
    run = train(
        folder / "spec.yaml",
        [elsewhere, (tmp_path / "single.txt").resolve()],
        tmp_path / "run",
        steps=1,
        batch_size=2,
        seq_len=32,
        progress=False,
    )
    record = json.loads((run / "run.json").read_text())
    assert record["data"] == ["texts/a.txt", "single.txt"]
    tokenizer = load_spec(run / "spec.yaml").vocabulary.tokenizer.model_dump()
    assert tokenizer == {"type": "file", "path": "tokenizer.json"}
    for path in run.rglob("*"):
        if path.suffix in (".json", ".jsonl", ".yaml"):
            assert str(tmp_path) not in path.read_text(encoding="utf-8"), path


# ----------------------------------------------------------------------------------------
# Files that are not regular files, or too large


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom", "directory"])
def test_a_spec_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = {"fifo": lambda: fifo(tmp_path / "spec.yaml"), "directory": lambda: tmp_path}.get(
        kind, lambda: Path(kind)
    )()
    with deadline(), pytest.raises(SpecError) as caught:
        load_spec(path)
    (problem,) = caught.value.problems
    assert problem.source == str(path)
    assert "give a regular file" in problem.message


def test_the_validate_verb_refuses_a_fifo_spec_with_exit_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fifo(tmp_path / "spec.yaml")
    with deadline():
        assert main(["validate", str(path)]) == 1
    assert "a FIFO (named pipe); give a regular file" in capsys.readouterr().err


def test_examples_and_templates_that_are_fifos_are_refused(tmp_path: Path) -> None:
    with deadline():
        with pytest.raises(PromptError, match="cannot read the examples: .*FIFO"):
            read_examples(fifo(tmp_path / "examples.jsonl"))
        with pytest.raises(PromptError, match="cannot read the template: .*FIFO"):
            read_template(fifo(tmp_path / "template.txt"))
        with pytest.raises(PromptError, match="character device"):
            read_examples("/dev/zero")


def test_an_examples_line_nested_deeper_than_any_example_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "examples.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(PromptError, match=r"examples.jsonl:2: JSON nested 100000 levels deep"):
        read_examples(path)


def test_corpora_and_tokenizer_files_that_are_fifos_are_refused(tmp_path: Path) -> None:
    fifo(tmp_path / "corpus.txt")
    fifo(tmp_path / "tokenizer.json")
    with deadline():
        spec = load_spec(with_tokenizer("{type: bpe, corpus: [corpus.txt]}"))
        with pytest.raises(TokenizerMismatch, match=r"corpus\[0\]: .*FIFO"):
            load_for_spec(spec, tmp_path)
        spec = load_spec(with_tokenizer("{type: file, path: tokenizer.json}"))
        with pytest.raises(TokenizerMismatch, match=r"tokenizer.path: .*FIFO"):
            load_for_spec(spec, tmp_path)
        with pytest.raises(TrainError, match="FIFO"):
            corpus_files([tmp_path / "corpus.txt"])
        spec = load_spec(TINY)
        ids = TokenIds.from_tokenizer(spec, byte_level(spec))
        with pytest.raises(TrainError, match="FIFO"):
            token_stream([tmp_path / "corpus.txt"], byte_level(spec), ids, causal=True)


def test_a_tokenizer_file_over_the_size_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_tokenizer(tmp_path / "tokenizer.json")
    spec = load_spec(with_tokenizer("{type: file, path: tokenizer.json}"))
    assert load_for_spec(spec, tmp_path).get_vocab_size() == 258  # bytes and specials
    monkeypatch.setattr(llmspec.tokenizer, "MAX_TOKENIZER_BYTES", 1000)
    with pytest.raises(TokenizerMismatch, match="larger than 1000 bytes"):
        load_for_spec(spec, tmp_path)


def test_a_file_tokenizer_that_is_not_json_is_refused_with_our_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes(b"\xff\xfe not a tokenizer")
    spec = load_spec(with_tokenizer("{type: file, path: tokenizer.json}"))
    with pytest.raises(TokenizerMismatch, match="not UTF-8"):
        load_for_spec(spec, tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": 5}')
    with pytest.raises(TokenizerMismatch, match="not a tokenizer.json"):
        load_for_spec(spec, tmp_path)


def test_hf_import_refuses_config_files_that_are_not_regular_or_too_deep(tmp_path: Path) -> None:
    source = tmp_path / "hf"
    source.mkdir()
    fifo(source / "config.json")
    with deadline(), pytest.raises(HFImportError, match="config.json: is a FIFO"):
        import_hf(source, tmp_path / "out")
    (source / "config.json").unlink()
    (source / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HFImportError, match="nested 100000 levels deep"):
        import_hf(source, tmp_path / "out")


# ----------------------------------------------------------------------------------------
# Corpora in bounded pieces


def test_iter_lines_with_line_ends_gives_back_the_text_exactly(tmp_path: Path) -> None:
    text = "one\r\ntwo\n\nthree é日本 " * 50 + "no end"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8", newline="")
    for max_line in (5, 7, 64, 1 << 16):
        pieces = list(iter_lines(path, max_line, keepends=True))
        assert "".join(pieces) == text
        assert max(len(p.encode()) for p in pieces) <= max_line


def test_bpe_training_in_pieces_equals_the_tokenizers_file_trainer(tmp_path: Path) -> None:
    lines = [
        f"{TEXT.strip()} {i % 7} über naïve\r\n" if i % 3 else "  indented\tline\n"
        for i in range(400)
    ]
    (tmp_path / "a.txt").write_text("".join(lines), encoding="utf-8", newline="")
    (tmp_path / "b.txt").write_text("a last line without an end " * 30)
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    spec = load_spec(with_tokenizer("{type: bpe, corpus: [a.txt, b.txt]}", size=400))
    ours = train_bpe(spec, files)
    reference = Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    reference.train([str(f) for f in files], bpe_trainer(spec))
    assert ours.get_vocab() == {
        **reference.get_vocab(),
        **{t: i for t, i in ours.get_vocab().items() if t not in reference.get_vocab()},
    }
    assert json.loads(ours.to_str())["model"] == json.loads(reference.to_str())["model"]


def test_a_corpus_that_is_one_giant_line_trains_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "one-line.txt"
    with path.open("w", encoding="utf-8") as out:
        for _ in range(4096):  # 1 MiB without a newline, multi-byte characters at every cut
            out.write(TEXT.strip().replace("dog", "dög") + " " * (256 - len(TEXT)))
    spec = load_spec(with_tokenizer("{type: bpe, corpus: [one-line.txt]}"))
    tokenizer = train_bpe(spec, [path], max_line=4096)
    assert 258 < tokenizer.get_vocab_size() <= 300
    assert tokenizer.decode(tokenizer.encode("the lazy dög").ids) == "the lazy dög"
    assert len(tokenizer.encode("the lazy dög").ids) < len("the lazy dög".encode())


def test_token_streams_of_large_files_equal_encoding_them_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llmspec.trainer.data, "ENCODE_CHUNK", 64)
    monkeypatch.setattr(llmspec.trainer.data, "ENCODE_CHUNK_MAX", 256)
    text = "".join(f"{TEXT}  indented {i}\n\n\tmore text here\r\n" for i in range(200))
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8", newline="")
    (tmp_path / "binary.bin").write_bytes(b"ok" * 200 + b"\xff")  # not UTF-8: skipped as before
    (tmp_path / "corpus.txt").write_text(TEXT * 50)
    files = [tmp_path / "doc.txt", tmp_path / "binary.bin"]
    for spec in (
        load_spec(TINY),
        load_spec(with_tokenizer("{type: bpe, corpus: [corpus.txt]}", size=400)),
    ):
        tokenizer = load_for_spec(spec, tmp_path)
        ids = TokenIds.from_tokenizer(spec, tokenizer)
        stream = token_stream(files, tokenizer, ids, causal=True)
        whole = [*tokenizer.encode(text).ids, ids.eos]
        assert stream.tolist() == whole


# ----------------------------------------------------------------------------------------
# Models too large for the machine


def absurd(field: str, value: int) -> str:
    return TINY.replace(f"\n{field}: ", f"\n{field}: {value}  # was ")


def small_machine(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    memory = MachineMemory(available, 2 * available, "this machine")
    monkeypatch.setattr(llmspec.builder, "machine_memory", lambda: memory)
    monkeypatch.setattr(llmspec.estimates.memory, "machine_memory", lambda: memory)


class Unbuildable(torch.nn.Module):
    def __init__(self, config: object) -> None:
        raise AssertionError("the model was instantiated although it cannot fit")


@pytest.mark.parametrize(("field", "value"), [("layers", 10**12), ("d_model", 10**9)])
def test_an_absurd_model_is_refused_before_anything_is_allocated(
    monkeypatch: pytest.MonkeyPatch, field: str, value: int
) -> None:
    spec = load_spec(absurd(field, value))
    _, config = llmspec.builder.model_classes(spec)
    monkeypatch.setattr(llmspec.builder, "model_classes", lambda spec: (Unbuildable, config))
    for weights in (None, {}):
        with pytest.raises(ModelTooLarge, match=r"needs at least [\d.]+ TiB, and this machine"):
            build(spec, weights=weights)


def test_a_model_larger_than_the_available_memory_is_refused_with_both_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = load_spec(TINY)
    assert build(spec) is not None  # fits as it is
    small_machine(monkeypatch, 100 * 1024)
    with pytest.raises(ModelTooLarge) as caught:
        build(spec)
    message = str(caught.value)
    params = count_parameters(spec).total
    need = human_bytes(build_bytes(spec))
    assert (
        f"tiny-gpt has {human_count(params)} parameters: building it in fp32 needs at least {need}"
        in message
    )
    assert "this machine has 100.0 KiB available (200.0 KiB in all)" in message
    assert "make the model smaller" in message
    with torch.device("meta"):  # counting parameters takes no memory: never refused
        assert sum(p.numel() for p in build(spec).parameters()) == params


def test_export_and_train_refuse_a_model_too_large_with_exit_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "layers.yaml"
    path.write_text(absurd("layers", 10**12))
    (tmp_path / "data.txt").write_text(TEXT)
    assert main(["export", str(path), "-o", str(tmp_path / "artifact")]) == 1
    assert "needs at least" in capsys.readouterr().err
    assert (
        main(
            ["train", str(path), "--data", str(tmp_path / "data.txt"), "-o", str(tmp_path / "run")]
        )
        == 1
    )
    assert "needs at least" in capsys.readouterr().err
    assert not (tmp_path / "artifact").exists() and not (tmp_path / "run").exists()


def test_estimate_warns_when_a_model_would_not_fit_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d_model.yaml"
    path.write_text(absurd("d_model", 10**9))
    assert main(["estimate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "parameters" in out
    assert "warning: tiny-gpt would not fit this machine: building it" in err
    assert main(["estimate", str(SPECS / "tiny-gpt.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err
    small_machine(monkeypatch, 1 << 20)  # builds in 1 MiB, but Adam's 16 B/param do not fit
    assert main(["estimate", str(SPECS / "tiny-gpt.yaml"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == "tiny-gpt"
    assert "warning: training tiny-gpt here would not fit" in err


def test_estimate_of_the_largest_integers_a_spec_holds_prints_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 1 << 62
    text = TINY
    for old, new in (
        ("layers: 2", f"layers: {n}"),
        ("d_model: 64", f"d_model: {n}"),
        ("d_ff: 256", f"d_ff: {n}"),
        ("size: 258", f"size: {n}"),
        ("heads: 4", "heads: 1"),
        ("context_length: 128", f"context_length: {n}"),
        ("max_positions: 128", f"max_positions: {n}"),
    ):
        text = text.replace(old, new)
    path = tmp_path / "extreme.yaml"
    path.write_text(text)
    for extra in ([], ["--json"], ["--device", "h100", "--gpus", "8"]):
        assert main(["estimate", str(path), *extra]) == 0
        assert "would not fit" in capsys.readouterr().err


def test_integers_beyond_64_bits_are_refused_in_specs_built_in_python() -> None:
    data = load_spec(TINY).model_dump()
    data["layers"] = 10**400
    data["feed_forward"]["d_ff"] = 1 << 63
    with pytest.raises(ValueError, match=r"layers: out of range.*feed_forward.d_ff: out of range"):
        ModelSpec.model_validate(data)


def test_on_a_gpu_the_check_uses_the_free_memory_torch_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[torch.device] = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return 3 << 30, 80 << 30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    spec = load_spec(absurd("d_model", 8192))  # 0.5 B parameters: 8 GiB to train
    memory = llmspec.builder.device_memory("cuda:0")
    assert memory == MachineMemory(3 << 30, 80 << 30, "cuda:0") and asked == [
        torch.device("cuda:0")
    ]
    need = llmspec.estimates.memory.train_bytes(spec)
    with pytest.raises(ModelTooLarge, match=r"cuda:0 has 3.0 GiB available \(80.0 GiB in all\)"):
        llmspec.builder.check_memory(spec, need, "training it", "cuda:0")
    llmspec.builder.check_memory(load_spec(TINY), need // 1000, "training it", "cuda:0")
