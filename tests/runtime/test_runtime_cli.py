"""The generate, fill-mask and embed verbs: output, exit status, and a runtime-only install."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from llmspec.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpt(varied_artifact):
    return str(varied_artifact("tiny-gpt"))


@pytest.fixture(scope="module")
def t5(varied_artifact):
    return str(varied_artifact("tiny-t5"))


@pytest.fixture(scope="module")
def bert(tiny_artifact):
    return str(tiny_artifact("tiny-encoder"))


def _run(capsys, *argv):
    status = main([*argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_generate_prints_the_text_and_a_summary(gpt, capsys):
    expected = runtime.load(gpt, device="cpu").generate("Hello", max_new_tokens=6).text
    status, out, err = _run(
        capsys, "generate", gpt, "--prompt", "Hello", "--max-new-tokens", "6", "--device", "cpu"
    )
    assert status == 0
    assert out == expected + "\n"
    assert "6 tokens (length)" in err and "on cpu" in err


def test_generate_json_for_a_batch(gpt, t5, capsys):
    for artifact in (gpt, t5):
        status, out, _ = _run(
            capsys,
            *("generate", artifact, "--prompt", "Hello", "--prompt", "Hi there", "--json"),
            *("--max-new-tokens", "5", "--chain", "top_k=10,sample", "--seed", "3"),
            *("--device", "cpu"),
        )
        assert status == 0
        data = json.loads(out)
        model = runtime.load(artifact, device="cpu")
        expected = model.generate(
            ["Hello", "Hi there"], max_new_tokens=5, chain="top_k=10,sample", seed=3
        )
        assert [r["tokens"] for r in data["results"]] == expected.tokens
        assert [r["prompt"] for r in data["results"]] == ["Hello", "Hi there"]
        assert data["device"] == "cpu" and data["timing"]["steps"] == 5


def test_generate_streams_text_and_json_lines(gpt, capsys):
    plain = runtime.load(gpt, device="cpu").generate(["Hello", "Hi"], max_new_tokens=6)
    status, out, _ = _run(
        capsys, "generate", gpt, "--prompt", "Hello", "--max-new-tokens", "6", "--stream",
        "--device", "cpu",
    )  # fmt: skip
    assert status == 0 and out == plain.texts[0] + "\n"
    status, out, _ = _run(
        capsys, "generate", gpt, "--prompt", "Hello", "--prompt", "Hi", "--max-new-tokens", "6",
        "--stream", "--json", "--device", "cpu",
    )  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert [line["type"] for line in lines] == ["token"] * 12 + ["result"]
    for row in (0, 1):
        events = [line for line in lines[:-1] if line["row"] == row]
        assert [e["token"] for e in events] == plain.tokens[row]
        assert "".join(e["text"] for e in events) == plain.texts[row]
    assert lines[-1]["results"][1]["tokens"] == plain.tokens[1]


def test_generate_with_a_stop_string(gpt, capsys):
    text = runtime.load(gpt, device="cpu").generate("Hello", max_new_tokens=12).text
    stop = text[5:7]
    status, out, _ = _run(
        capsys, "generate", gpt, "--prompt", "Hello", "--max-new-tokens", "12", "--stop", stop,
        "--json", "--device", "cpu",
    )  # fmt: skip
    result = json.loads(out)["results"][0]
    assert status == 0
    assert result["text"] == text[: text.find(stop)] and result["finish_reason"] == "stop"


def test_generate_few_shot_prompts(gpt, tmp_path, capsys):
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"input": "1+1", "output": "2"}\n\n{"input": "2+2", "output": "4"}\n')
    template = tmp_path / "template.txt"
    template.write_text("Q: {input}\nA: {output}\n")
    status, out, _ = _run(
        capsys, "generate", gpt, "--prompt", "3+3", "--examples", str(examples), "--shots", "1",
        "--template", str(template), "--max-new-tokens", "3", "--json", "--device", "cpu",
    )  # fmt: skip
    assert status == 0
    result = json.loads(out)["results"][0]
    assert result["prompt"] == "Q: 1+1\nA: 2\n\nQ: 3+3\nA: "
    model = runtime.load(gpt, device="cpu")
    assert result["prompt_tokens"] == model.encode(result["prompt"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt", ""], "prompt 0 is empty"),
        (["--prompt", "Hi", "--chain", "top_p=2,sample"], "top_p must be in (0, 1]"),
        (["--prompt", "Hi", "--chain", "nucleus=0.9,sample"], "unknown decoding step 'nucleus'"),
        (["--prompt", "x" * 127, "--max-new-tokens", "2"], "beyond the context window of 128"),
        (["--prompt", "Hi", "--examples", "MISSING.jsonl"], "cannot read the examples"),
        (["--prompt", "Hi", "--device", "cuda"], "device='cuda' was asked for"),
    ],
)
def test_generate_bad_input_exits_one(gpt, capsys, argv, message):
    if "cuda" in argv and runtime.session.cuda_status()[0]:
        pytest.skip("CUDA works here")
    status, out, err = _run(capsys, "generate", gpt, *argv)
    assert status == 1 and out == ""
    assert message in err and "Traceback" not in err


def test_bad_artifacts_exit_one(gpt, bert, tmp_path, capsys):
    status, _, err = _run(capsys, "generate", str(tmp_path), "--prompt", "Hi")
    assert status == 1 and "manifest.json: missing" in err
    status, _, err = _run(capsys, "generate", bert, "--prompt", "Hi", "--device", "cpu")
    assert status == 1 and "encoder-only models cannot generate; use llmspec fill-mask" in err
    status, _, err = _run(capsys, "fill-mask", gpt, "a [MASK]", "--device", "cpu")
    assert status == 1 and "decoder-only models cannot fill-mask; use llmspec generate" in err
    status, _, err = _run(capsys, "embed", gpt, "a", "--device", "cpu")
    assert status == 1 and "cannot embed" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "A"],  # no --prompt
        ["generate", "A", "--prompt", "x", "--max-new-tokens", "-1"],
        ["generate", "A", "--prompt", "x", "--shots", "2"],
        ["generate", "A", "--prompt", "x", "--template", "t.txt"],
        ["generate", "A", "--prompt", "x", "--prompt", "y", "--stream"],
        ["generate", "A", "--prompt", "x", "--device", "tpu"],
        ["fill-mask", "A"],
        ["fill-mask", "A", "x", "--top-k", "0"],
        ["embed", "A"],
        ["embed", "A", "x", "--pooling", "max"],
    ],
)
def test_usage_errors_exit_two(capsys, argv):
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        status = exit.code
    assert status == 2
    assert "error" in capsys.readouterr().err


def test_fill_mask_verb(bert, capsys):
    expected = runtime.load(bert, device="cpu").fill_mask("a [MASK] b", top_k=3)
    status, out, _ = _run(capsys, "fill-mask", bert, "a [MASK] b", "--top-k", "3", "--json")
    assert status == 0
    data = json.loads(out)
    assert [c["token_id"] for c in data] == [c.token_id for c in expected]
    assert data[0]["text"] == expected[0].text
    status, out, _ = _run(capsys, "fill-mask", bert, "a [MASK] b", "--device", "cpu")
    assert status == 0 and len(out.rstrip("\n").split("\n")) == 5
    status, _, err = _run(capsys, "fill-mask", bert, "no mask", "--device", "cpu")
    assert status == 1 and "no mask tokens" in err


def test_embed_verb(bert, capsys):
    expected = runtime.load(bert, device="cpu").embed(["a", "bc"], pooling="cls")
    status, out, _ = _run(capsys, "embed", bert, "a", "bc", "--pooling", "cls", "--json")
    data = json.loads(out)
    assert status == 0 and data["dimension"] == 64 and data["pooling"] == "cls"
    np.testing.assert_allclose(np.asarray(data["embeddings"]), expected, rtol=1e-6)
    status, out, _ = _run(capsys, "embed", bert, "a", "bc", "--normalize", "--device", "cpu")
    rows = [[float(x) for x in line.split()] for line in out.splitlines()]
    assert status == 0 and len(rows) == 2 and len(rows[0]) == 64
    assert sum(x * x for x in rows[0]) == pytest.approx(1.0, rel=1e-4)


HEAVY = ("torch", "onnx", "jinja2", "transformers")


def test_runtime_verbs_work_when_heavy_packages_cannot_be_imported(gpt, bert, tmp_path):
    """As on a deployment with only the runtime installed: importing torch, onnx, jinja2 or
    transformers fails (a None entry in sys.modules makes `import` raise ImportError)."""
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"input": "a", "output": "b"}\n')
    runs = [
        ["generate", gpt, "--prompt", "Hi", "--max-new-tokens", "4", "--json"],
        ["generate", gpt, "--prompt", "Hi", "--examples", str(examples), "--max-new-tokens", "2"],
        ["generate", gpt, "--prompt", "Hi", "--max-new-tokens", "3", "--stream"],
        ["fill-mask", bert, "a [MASK]", "--json"],
        ["embed", bert, "a", "b"],
    ]
    for argv in runs:
        code = (
            "import sys\n"
            f"for name in {HEAVY!r}: sys.modules[name] = None\n"
            "from llmspec.cli import main\n"
            f"status = main({[*argv, '--device', 'cpu']!r})\n"
            f"loaded = [m for m in {HEAVY!r} if sys.modules.get(m) is not None]\n"
            "assert not loaded, loaded\n"
            "sys.exit(status)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert out.returncode == 0, (argv, out.stderr)
        assert out.stdout.strip()
