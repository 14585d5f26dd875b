"""Hostile requests, hostile tokenizers and absurd generation defaults end in our errors.

Every case here once ended in a traceback, an unbounded allocation or a Rust panic (issue 12,
items 5, 9, 11, 12 and 16): a beam width of 10^9, a generation.json asking for 10^12 new
tokens or nested 100,000 deep, a tokenizer.json whose regex makes the tokenizers library
panic (pyo3's PanicException, a BaseException), a prompt that is not valid Unicode, and
chains such as ``5`` or ``["greedy"]``. Through the Python API they raise ArtifactError,
RuntimeInputError or DecodingError (all ValueErrors) with a message saying what and where;
through the command line they exit 1 with that message and no traceback.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from llmspec.cli import main
from llmspec.errors import SpecError
from llmspec.inspect.verify import _check_tokenizer, verify
from llmspec.spec.loading import load_spec
from runtime import artifact as fmt
from runtime.beam_search import BeamSearcher
from runtime.decoding import (
    MAX_BEAMS,
    MAX_STEPS,
    STEPS,
    BeamSearch,
    DecodingChain,
    DecodingError,
    Greedy,
    Sample,
    TopK,
)
from runtime.generation import GenerationConfigError, read_generation
from runtime.memory import machine_memory
from runtime.sampling import SamplerChain
from runtime.tokenizer import ArtifactTokenizer, _guarded, check_text, is_panic

ROOT = Path(__file__).resolve().parents[2]

# A Replace normalizer whose regex matches the empty string: the tokenizers library panics
# ("index out of bounds") on every text.
EMPTY_MATCH_NORMALIZER = {"type": "Replace", "pattern": {"Regex": "x*"}, "content": "y"}
# A catastrophic Split regex: Oniguruma gives up backtracking on a sentence and the library
# panics ("retry-limit-in-match over").
CATASTROPHIC_SPLIT = {
    "type": "Split",
    "pattern": {"Regex": "^(\\w+\\s?)*$"},
    "behavior": "Isolated",
    "invert": False,
}
SENTENCE = "The quick brown fox jumps over the lazy dog."


# ---------------------------------------------------------------------------------------------
# Artifacts with one file replaced (the manifest's entry updated, so only our code can refuse)


@pytest.fixture(scope="module")
def gpt_path(tiny_artifact) -> Path:
    return Path(tiny_artifact("tiny-gpt", "fp32"))


@pytest.fixture(scope="module")
def gpt(gpt_path):
    return runtime.load(gpt_path, device="cpu")


def with_file(source: Path, target: Path, name: str, content: bytes) -> Path:
    """A copy of the artifact ``source`` at ``target`` whose file ``name`` holds ``content``,
    its manifest entry (size, sha256) rewritten to match."""
    shutil.copytree(source, target)
    (target / name).write_bytes(content)
    manifest = json.loads((target / fmt.MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][name] = asdict(fmt.file_info(target / name))
    (target / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target


def tokenizer_json(source: Path, **changes: Any) -> bytes:
    data = json.loads((source / fmt.TOKENIZER).read_text(encoding="utf-8"))
    data.update(copy.deepcopy(changes))
    return json.dumps(data).encode()


def hostile_tokenizer(source: Path, tmp_path: Path, **changes: Any) -> Path:
    return with_file(source, tmp_path / "hostile", fmt.TOKENIZER, tokenizer_json(source, **changes))


def generation_json(data: Any) -> bytes:
    return data if isinstance(data, bytes) else json.dumps(data).encode()


# ---------------------------------------------------------------------------------------------
# Item 5: decoding sizes are bounded


HUGE_BEAMS = [
    lambda: BeamSearch(beams=10**9),
    lambda: DecodingChain.parse("beam_search=1000000000"),
    lambda: DecodingChain.from_json([{"type": "beam_search", "beams": 10**9}]),
    lambda: DecodingChain.coerce(["beam_search=1000000000"]),
    lambda: BeamSearcher(10**9, batch=1),
]


@pytest.mark.parametrize("build", HUGE_BEAMS)
def test_a_beam_width_beyond_the_bound_is_refused_everywhere_saying_the_limit(build):
    with pytest.raises(DecodingError, match=f"at most {MAX_BEAMS} beams, got 1000000000"):
        build()


def test_the_widest_allowed_beam_still_runs():
    assert BeamSearch(beams=MAX_BEAMS).beams == MAX_BEAMS


@pytest.mark.parametrize("penalty", [1e300, -1e300, 10.5, -11])
def test_a_length_penalty_that_would_overflow_the_score_is_refused(penalty):
    with pytest.raises(DecodingError, match="length_penalty must be within -10 to 10"):
        BeamSearch(length_penalty=penalty)


@pytest.mark.parametrize("penalty", [10.0, -10.0])
def test_the_extreme_allowed_length_penalties_score_without_overflow(penalty):
    searcher = BeamSearcher(4, penalty, False, eos_id=0, pad_id=0, batch=1)
    logprobs = np.log(np.full((4, 5), 0.2))
    for _ in range(30):
        searcher.step(logprobs.copy())
    assert searcher.best()[0]  # a hypothesis, scored without OverflowError or ZeroDivisionError


def test_early_stopping_must_be_a_boolean():
    with pytest.raises(DecodingError, match="early_stopping must be true or false, got 'yes'"):
        DecodingChain.from_json([{"type": "beam_search", "early_stopping": "yes"}])


def test_a_chain_longer_than_the_bound_is_refused():
    steps = [{"type": "temperature", "value": 1.0}] * MAX_STEPS + [{"type": "greedy"}]
    with pytest.raises(DecodingError, match=f"more than the {MAX_STEPS} allowed"):
        DecodingChain.from_json(steps)
    with pytest.raises(DecodingError, match=f"more than the {MAX_STEPS} allowed"):
        DecodingChain.parse(",".join(["temperature=1"] * MAX_STEPS + ["greedy"]))


def test_a_beam_search_of_a_billion_beams_is_refused_before_any_allocation(gpt):
    with pytest.raises(DecodingError, match="at most 128 beams"):
        gpt.generate("Hi", max_new_tokens=1, chain=[{"type": "beam_search", "beams": 10**9}])


def test_max_new_tokens_beyond_the_context_window_is_refused(gpt):
    with pytest.raises(runtime.RuntimeInputError, match="beyond the context window of 128"):
        gpt.generate("Hi", max_new_tokens=10**12)


def test_a_request_whose_kv_cache_cannot_fit_the_machine_is_refused_saying_the_sizes(gpt):
    memory = machine_memory()
    assert memory is not None  # Linux says
    one_row = gpt.request_bytes([[5]], 127, MAX_BEAMS)
    prompts = [[5]] * (memory.total // one_row + 1)
    with pytest.raises(runtime.RuntimeInputError) as caught:
        gpt.generate(prompts, max_new_tokens=127, chain=f"beam_search={MAX_BEAMS}")
    message = str(caught.value)
    assert f"{len(prompts)} prompts x {MAX_BEAMS} beams" in message
    assert "GiB of memory of this machine" in message and "send fewer prompts" in message


def test_the_memory_estimate_grows_with_batch_beams_and_length(gpt):
    base = gpt.request_bytes([[5]], 10, 1)
    assert gpt.request_bytes([[5], [6]], 10, 1) == 2 * base
    assert gpt.request_bytes([[5]], 10, 4) == 4 * base
    assert gpt.request_bytes([[5]], 100, 1) > base


# ---------------------------------------------------------------------------------------------
# Item 16: messages of bad chains


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("top_k=1.5,sample", "top_k must be a whole number, got 1.5"),
        ("no_repeat_ngram=2.5,greedy", "no_repeat_ngram must be a whole number, got 2.5"),
        ("beam_search=4.0", "beam_search must be a whole number, got 4.0"),
        ("top_k=lots,sample", "top_k='lots': 'lots' is not a number"),
        ("top_k=" + "9" * 5000 + ",sample", "the number has too many digits"),
    ],
)
def test_a_parameter_of_the_wrong_kind_says_what_kind_it_must_be(text, message):
    with pytest.raises(DecodingError, match=__import__("re").escape(message)):
        DecodingChain.parse(text)


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (5, "a decoding chain is its compact form"),
        (None, "got None (NoneType)"),
        (b"greedy", "got b'greedy' (bytes)"),
        ({"type": "greedy"}, "wrap the step in a list"),
        (Greedy(), "wrap the step in a list"),
        ([None], "step 0 is None (NoneType), not a decoding step"),
        ([TopK(k=5), 3.5], "step 1 is 3.5 (float), not a decoding step"),
        ([{"type": 5}], "step 0 has the type 5 (int); name the step"),
        ([{"k": 5}], "step 0 has no 'type'"),
        ([{"type": "top_k", "k": 1.5}, "greedy"], "top_k must be an integer >= 0"),
        ([""], "step 0 is '' (str), not a decoding step"),
        (["top_k=5"], "the chain has no selector"),
        ([Greedy], "not a decoding step"),
    ],
)
def test_a_chain_that_is_not_one_says_what_a_chain_may_be(chain, message):
    with pytest.raises(DecodingError, match=__import__("re").escape(message)):
        DecodingChain.coerce(chain)
    with pytest.raises(DecodingError):
        SamplerChain(chain)


@pytest.mark.parametrize(
    ("chain", "steps"),
    [
        (["greedy"], (Greedy(),)),
        (("top_k=5", "sample"), (TopK(k=5), Sample())),
        (["top_k=5,sample"], (TopK(k=5), Sample())),
        ([{"type": "top_k", "k": 5}, "sample"], (TopK(k=5), Sample())),
        ([TopK(k=5), {"type": "greedy"}], (TopK(k=5), Greedy())),
    ],
)
def test_a_list_of_step_names_dicts_and_objects_is_a_chain(chain, steps):
    assert DecodingChain.coerce(chain).steps == steps


def test_a_json_chain_must_be_a_list_of_objects():
    with pytest.raises(DecodingError, match="a chain in JSON is a list of steps"):
        DecodingChain.from_json("greedy")  # type: ignore[arg-type]
    with pytest.raises(DecodingError, match="step 0 is 'greedy' \\(str\\); a step in JSON"):
        DecodingChain.from_json(["greedy"])  # type: ignore[list-item]


def test_chain_5_and_chain_greedy_list_through_generate(gpt):
    with pytest.raises(DecodingError, match="a decoding chain is its compact form"):
        gpt.generate("Hi", max_new_tokens=1, chain=5)
    assert gpt.generate("Hi", max_new_tokens=2, chain=["greedy"]).tokens == (
        gpt.generate("Hi", max_new_tokens=2, chain="greedy").tokens
    )


# ---------------------------------------------------------------------------------------------
# Item 12: prompts that are not valid text


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("\ud800", "prompt 0: character 0 is a lone surrogate U+D800"),
        ("ab\udcffc", "prompt 0: character 2 is the byte 0xff"),
        (["fine", "x\udfff"], "prompt 1: character 1 is a lone surrogate U+DFFF"),
    ],
)
def test_a_prompt_that_is_not_valid_unicode_names_the_position(gpt, prompt, message):
    with pytest.raises(runtime.RuntimeInputError, match=__import__("re").escape(message)) as err:
        gpt.generate(prompt, max_new_tokens=1)
    assert "pass valid UTF-8 text" in str(err.value)


@pytest.mark.parametrize("prompt", [b"Hi", bytearray(b"Hi"), [b"Hi"]])
def test_bytes_prompts_are_refused_not_guessed(gpt, prompt):
    with pytest.raises(runtime.RuntimeInputError, match="bytes"):
        gpt.generate(prompt, max_new_tokens=1)


def test_an_encoder_text_that_is_not_valid_unicode_names_the_position(tiny_artifact):
    bert = runtime.load(tiny_artifact("tiny-encoder"), device="cpu")
    with pytest.raises(runtime.RuntimeInputError, match="text 1: character 2 is the byte 0x80"):
        bert.embed(["fine", "ab\udc80"])


def test_check_text_refuses_what_is_not_a_string():
    with pytest.raises(runtime.RuntimeInputError, match="text must be a string, got int"):
        check_text(5, "text")
    assert check_text("naïve 😀", "text") == "naïve 😀"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stop": 5}, "stop must be a string or a list of strings, got int"),
        ({"prompts": [[1, [2]]]}, "prompt 0 must be a string or a list of integer token ids"),
        ({"prompts": [{"a": 1}]}, "prompt 0 must be a string or a list of integer token ids"),
    ],
)
def test_odd_request_values_are_runtime_input_errors(gpt, options, message):
    request = {"prompts": "Hi", "max_new_tokens": 1, **options}
    with pytest.raises(runtime.RuntimeInputError, match=__import__("re").escape(message)):
        gpt.generate(**request)


def test_a_surrogate_prompt_on_the_command_line_exits_1_with_the_position(gpt_path, capsys):
    # what Python makes of the argument bytes b"\xff" (surrogateescape)
    status = main(["generate", str(gpt_path), "--prompt", "\udcff", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    assert "prompt 0: character 0 is the byte 0xff" in err and "Traceback" not in err


def test_non_utf8_argv_bytes_exit_1_without_a_traceback(gpt_path):
    command = [sys.executable, "-m", "llmspec", "generate", str(gpt_path).encode()]
    command += [b"--prompt", b"caf\xe9", b"--device", b"cpu"]
    done = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=300)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err
    assert "character 3 is the byte 0xe9" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Item 9: tokenizer failures, panics included


def test_the_hostile_tokenizers_really_panic_in_the_library(gpt_path):
    from tokenizers import Tokenizer

    for changes, text in (
        ({"normalizer": EMPTY_MATCH_NORMALIZER}, "Hi"),
        ({"pre_tokenizer": CATASTROPHIC_SPLIT}, SENTENCE),
    ):
        raw = Tokenizer.from_str(tokenizer_json(gpt_path, **changes).decode())
        with pytest.raises(BaseException) as caught:  # the point is its kind
            raw.encode(text)
        assert is_panic(caught.value) and not isinstance(caught.value, Exception)


@pytest.mark.parametrize(
    ("changes", "prompt"),
    [
        ({"normalizer": EMPTY_MATCH_NORMALIZER}, "Hi"),
        ({"pre_tokenizer": CATASTROPHIC_SPLIT}, SENTENCE),
    ],
)
def test_a_tokenizer_that_panics_is_an_artifact_error_in_generate(
    gpt_path, tmp_path, changes, prompt
):
    model = runtime.load(hostile_tokenizer(gpt_path, tmp_path, **changes), device="cpu")
    with pytest.raises(runtime.ArtifactError) as caught:
        model.generate(prompt, max_new_tokens=1)
    message = str(caught.value)
    assert "tokenizer.json: the tokenizer failed to encode prompt 0 (panic:" in message
    assert "export the artifact again" in message


def test_generate_with_a_panicking_tokenizer_exits_1_without_a_traceback(
    gpt_path, tmp_path, capsys
):
    artifact = hostile_tokenizer(gpt_path, tmp_path, normalizer=EMPTY_MATCH_NORMALIZER)
    status = main(["generate", str(artifact), "--prompt", "Hi", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    assert "the tokenizer failed to encode prompt 0 (panic:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "changes",
    [{"normalizer": EMPTY_MATCH_NORMALIZER}, {"pre_tokenizer": CATASTROPHIC_SPLIT}],
)
def test_verify_exercises_the_tokenizer_and_fails_a_panicking_one(gpt_path, tmp_path, changes):
    report = verify(hostile_tokenizer(gpt_path, tmp_path, **changes), examples=1)
    assert not report.passed
    assert "tokenizer.json: the tokenizer failed to encode sample text" in report.error
    assert "panic:" in report.error


def test_verify_command_on_a_panicking_tokenizer_exits_1_without_a_traceback(
    gpt_path, tmp_path, capsys
):
    artifact = hostile_tokenizer(gpt_path, tmp_path, pre_tokenizer=CATASTROPHIC_SPLIT)
    status = main(["verify", str(artifact), "--examples", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert "the tokenizer failed to encode" in err and "Traceback" not in err


def test_verify_fails_special_tokens_that_the_tokenizer_does_not_map(gpt_path, tmp_path):
    data = json.loads((gpt_path / fmt.TOKENIZER).read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<pad>"]
    del data["model"]["vocab"]["<pad>"]
    artifact = with_file(gpt_path, tmp_path / "a", fmt.TOKENIZER, json.dumps(data).encode())
    report = verify(artifact, examples=1)
    assert not report.passed
    assert "pad '<pad>' has id None, the manifest says 0" in report.error


def test_the_good_artifact_passes_the_tokenizer_check(gpt_path):
    check = _check_tokenizer(
        gpt_path, fmt.read_manifest(gpt_path), load_spec(gpt_path / "spec.yaml")
    )
    assert check.passed and "sample texts encode and decode" in check.detail


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "not a readable tokenizer.json"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{}", "not a readable tokenizer.json"),
        (b'{"model": 5}', "not a readable tokenizer.json"),
    ],
)
def test_a_tokenizer_file_that_cannot_be_parsed_is_an_artifact_error(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(runtime.ArtifactError, match=message):
        ArtifactTokenizer.from_file(path)


def test_a_fifo_tokenizer_is_refused_without_blocking(tmp_path):
    path = tmp_path / "tokenizer.json"
    os.mkfifo(path)
    with pytest.raises(runtime.ArtifactError, match="FIFO"):
        ArtifactTokenizer.from_file(path)


def test_the_guard_lets_keyboard_interrupt_through():
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _guarded(interrupted, lambda err: err)


def test_the_guard_mirrors_the_library_for_good_calls(gpt):
    tokenizer = gpt.tokenizer
    ids = tokenizer.encode("Hello", add_special_tokens=False).ids
    assert tokenizer.decode(ids) == tokenizer.raw.decode(ids)
    assert tokenizer.token_to_id("<pad>") == 0 and tokenizer.id_to_token(0) == "<pad>"
    assert [e.ids for e in tokenizer.encode_batch(["a", "b"])] == [
        tokenizer.raw.encode("a").ids,
        tokenizer.raw.encode("b").ids,
    ]
    assert tokenizer.get_vocab_size() == len(tokenizer.get_vocab())
    assert tokenizer.decode([10**9]) == ""  # outside the vocabulary: no text, no error
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([-1])


# ---------------------------------------------------------------------------------------------
# generation.json: absurd defaults, wrong types, deep nesting, huge files (items 5, 6, 11)


ABSURD_GENERATION = [
    (
        {"max_new_tokens": 8, "chain": [{"type": "beam_search", "beams": 10**9}]},
        "chain: beam_search takes at most 128 beams",
    ),
    (
        {"max_new_tokens": 10**12, "chain": [{"type": "greedy"}]},
        "max_new_tokens is 1000000000000, beyond the context window of 128 tokens",
    ),
    ({"max_new_tokens": 10**40, "chain": [{"type": "greedy"}]}, "a 41-digit number"),
    ({"max_new_tokens": "64", "chain": [{"type": "greedy"}]}, "got '64'"),
    ({"max_new_tokens": True, "chain": [{"type": "greedy"}]}, "got True"),
    ({"max_new_tokens": -1, "chain": [{"type": "greedy"}]}, "whole number >= 0, got -1"),
    ({"max_new_tokens": 8.5, "chain": [{"type": "greedy"}]}, "got 8.5"),
    ({"max_new_tokens": 8, "chain": "greedy"}, "chain: a chain in JSON is a list of steps"),
    ({"max_new_tokens": 8, "chain": []}, "chain: the chain is empty"),
    ({"max_new_tokens": 8, "chain": [5]}, "chain: step 0 is 5 (int)"),
    ({"max_new_tokens": 8, "chain": [{"type": "top_k", "k": 5}]}, "no selector"),
    ({"max_new_tokens": 8}, "missing chain"),
    ([1, 2], "expected a JSON object"),
    (b'{"max_new_tokens": 8, "chain": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
    (b'{"max_new_tokens": 8, "chain": [{"type": "greedy"}]}' + b" " * (2 << 20), "larger than"),
    (b"\xff", "not UTF-8"),
    (b"{max_new_tokens: 8}", "not valid JSON"),
    (b'{"max_new_tokens": ' + b"9" * 5000 + b', "chain": []}', "not valid JSON"),
]


@pytest.mark.parametrize(("data", "message"), ABSURD_GENERATION)
def test_load_refuses_an_absurd_generation_json_naming_it(gpt_path, tmp_path, data, message):
    artifact = with_file(gpt_path, tmp_path / "a", fmt.GENERATION, generation_json(data))
    with pytest.raises(runtime.ArtifactError) as caught:
        runtime.load(artifact, device="cpu")
    assert "generation.json" in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(("data", "message"), ABSURD_GENERATION[:3] + ABSURD_GENERATION[-5:])
def test_verify_fails_an_absurd_generation_json_naming_it(gpt_path, tmp_path, data, message):
    artifact = with_file(gpt_path, tmp_path / "a", fmt.GENERATION, generation_json(data))
    report = verify(artifact, examples=1)
    assert not report.passed
    assert "generation.json" in report.error and message in report.error


def test_verify_command_on_beams_of_a_billion_exits_1_without_a_traceback(
    gpt_path, tmp_path, capsys
):
    data = {"max_new_tokens": 8, "chain": [{"type": "beam_search", "beams": 10**9}]}
    artifact = with_file(gpt_path, tmp_path / "a", fmt.GENERATION, generation_json(data))
    status = main(["verify", str(artifact), "--examples", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert "at most 128 beams" in err and "Traceback" not in err


def test_generate_command_on_an_absurd_default_exits_1_without_a_traceback(
    gpt_path, tmp_path, capsys
):
    data = {"max_new_tokens": 10**12, "chain": [{"type": "greedy"}]}
    artifact = with_file(gpt_path, tmp_path / "a", fmt.GENERATION, generation_json(data))
    status = main(["generate", str(artifact), "--prompt", "Hi", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    assert "beyond the context window" in err and "Traceback" not in err


def test_a_default_that_fills_the_window_is_named_when_a_request_overflows(gpt_path, tmp_path):
    data = {"max_new_tokens": 128, "chain": [{"type": "greedy"}]}
    artifact = with_file(gpt_path, tmp_path / "a", fmt.GENERATION, generation_json(data))
    model = runtime.load(artifact, device="cpu")
    with pytest.raises(runtime.RuntimeInputError, match="the artifact's default, from generation"):
        model.generate("Hi")
    assert len(model.generate("Hi", max_new_tokens=2).tokens[0]) <= 2


def test_a_fifo_generation_json_is_refused_without_blocking(tmp_path):
    path = tmp_path / "generation.json"
    os.mkfifo(path)
    with pytest.raises(GenerationConfigError, match="FIFO"):
        read_generation(path, 128)


def test_the_cli_beam_width_of_a_billion_exits_1(gpt_path, capsys):
    argv = ["generate", str(gpt_path), "--prompt", "Hi", "--chain", "beam_search=1000000000"]
    status = main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and "at most 128 beams, got 1000000000" in err


def test_the_cli_top_k_of_one_and_a_half_says_whole_number(gpt_path, capsys):
    argv = ["generate", str(gpt_path), "--prompt", "Hi", "--chain", "top_k=1.5,sample"]
    status = main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and "top_k must be a whole number, got 1.5" in err


def test_a_spec_asking_for_more_new_tokens_than_its_context_is_refused():
    text = (ROOT / "specs" / "tiny-gpt.yaml").read_text(encoding="utf-8")
    text = text.replace("max_new_tokens: 32", "max_new_tokens: 1000000000000")
    with pytest.raises(SpecError, match="max_new_tokens 1000000000000 is beyond the context"):
        load_spec(text)


# ---------------------------------------------------------------------------------------------
# Property: no chain a caller can pass makes generate raise anything but our errors


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(sorted(STEPS))
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_PARAMETER = st.sampled_from(
    ["value", "k", "p", "penalty", "n", "beams", "length_penalty", "early_stopping", "q"]
)
_NUMBER = st.one_of(
    st.integers(-5, 300),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
)
_STEP_DICT = st.builds(
    lambda name, params: {"type": name, **params},
    st.sampled_from(sorted(STEPS)),
    st.dictionaries(_PARAMETER, _NUMBER, max_size=2),
)
_COMPACT = st.lists(
    st.tuples(st.sampled_from([*sorted(STEPS), "top-k", "nope", ""]), st.text(max_size=6)),
    max_size=4,
).map(lambda items: ",".join(f"{n}={v}" if v else n for n, v in items))
CHAINS = st.one_of(
    _VALUES,
    _COMPACT,
    st.lists(_STEP_DICT, max_size=4),
    st.lists(st.one_of(_STEP_DICT, _COMPACT, _SCALARS), max_size=4),
    st.lists(_STEP_DICT, max_size=3).map(lambda steps: [*steps, {"type": "sample"}]),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(chain=CHAINS, max_new_tokens=st.integers(1, 2), seed=st.integers(0, 3))
def test_any_chain_either_generates_or_raises_our_errors(gpt, chain, max_new_tokens, seed):
    try:
        result = gpt.generate("Hi", max_new_tokens=max_new_tokens, chain=chain, seed=seed)
    except (DecodingError, runtime.RuntimeInputError):
        return
    assert 1 <= len(result.tokens[0]) <= max_new_tokens
