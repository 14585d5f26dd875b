"""The command line: exit statuses 0 (ok), 1 (bad input), 2 (usage); --json output."""

import json
import subprocess
import sys
from pathlib import Path

from llmspec.cli import main
from llmspec.spec.schema import json_schema_text

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "specs" / "tiny-decoder.yaml"


def test_validate_good_specs_exits_zero(capsys):
    assert main(["validate", str(TINY), str(ROOT / "specs" / "tiny-t5.yaml")]) == 0
    assert "tiny-decoder.yaml: ok" in capsys.readouterr().out


def test_validate_bad_spec_exits_one_with_located_problems(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("heads: 4, kv_heads: 2", "heads: 4, kv_heads: 3"))
    assert main(["validate", str(TINY), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:12:" in err and "attention.kv_heads: kv_heads (3) must divide heads (4)" in err


def test_validate_json_lists_each_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("layers: 4", "layerz: 4"))
    assert main(["validate", "--json", str(bad)]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    fields = {p["field"] for p in result["problems"]}
    assert {"layerz", "layers"} <= fields


def test_usage_errors_exit_two():
    for argv in (["validate"], ["frobnicate"], ["estimate", str(TINY), "--gpus", "0"], []):
        out = subprocess.run(
            [sys.executable, "-m", "llmspec", *argv], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 2, argv
        assert "usage:" in out.stderr


def test_missing_spec_file_is_bad_input_not_a_traceback(capsys):
    assert main(["validate", "no/such/spec.yaml"]) == 1
    err = capsys.readouterr().err
    assert "no/such/spec.yaml: <document>: no such file" in err
    assert "Traceback" not in err


def test_schema_prints_the_json_schema(capsys, tmp_path):
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == json_schema_text()
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert target.read_text() == json_schema_text()


def test_tokenizer_verb_trains_the_specs_bpe(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        TINY.read_text()
        .replace("size: 260", "size: 300")
        .replace(
            "  special_tokens:", "  tokenizer: {type: bpe, corpus: [corpus.txt]}\n  special_tokens:"
        )
    )
    out = tmp_path / "tokenizer.json"
    assert main(["tokenizer", str(spec), "-o", str(out)]) == 0
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out))
    assert tokenizer.token_to_id("<pad>") == 0
    assert len(tokenizer.encode("the quick brown fox").ids) < len("the quick brown fox")


def test_tokenizer_verb_names_a_missing_corpus(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        TINY.read_text().replace(
            "  special_tokens:", "  tokenizer: {type: bpe, corpus: [nope.txt]}\n  special_tokens:"
        )
    )
    assert main(["tokenizer", str(spec), "-o", str(tmp_path / "t.json")]) == 1
    assert "nope.txt" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
