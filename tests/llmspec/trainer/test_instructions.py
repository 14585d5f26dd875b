"""Instruction data: records, templates, labels on the responses only (a property test on the
real generated model: masked positions never reach the loss's gradient), errors by line, and
the LoRA settings' text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmspec
from llmspec.tokenizer import load_for_spec
from llmspec.trainer.instructions import (
    IGNORE,
    PLAIN_PROMPT,
    ChatTemplate,
    InstructionError,
    Renderer,
    collate,
    epoch_order,
    jsonl_files,
    read_conversations,
)
from llmspec.trainer.lora import LoraSettings, parse_lora
from llmspec.trainer.objectives import TokenIds, to_torch
from llmspec.trainer.settings import TrainError

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "specs"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def renderer(name: str, seq_len: int = 256, template: ChatTemplate | None = None) -> Renderer:
    spec = llmspec.load_spec(SPECS / f"{name}.yaml")
    tokenizer = load_for_spec(spec, SPECS)
    ids = TokenIds.from_tokenizer(spec, tokenizer)
    return Renderer(tokenizer, ids, spec.architecture == "encoder-decoder", seq_len, template)


def trained_text(r: Renderer, example: dict[str, np.ndarray]) -> list[int]:
    labels = example["labels"]
    return [int(t) for t in labels[labels != IGNORE]]


def test_plain_template_trains_exactly_the_response_and_eos():
    r = renderer("tiny-decoder")
    example = r.example(
        [{"role": "user", "content": "Add 2 and 2."}, {"role": "assistant", "content": "4"}]
    )
    assert example is not None
    prompt = r.tokenizer.encode(
        PLAIN_PROMPT.format(prompt="Add 2 and 2."), add_special_tokens=False
    ).ids
    response = r.tokenizer.encode("4", add_special_tokens=False).ids
    assert list(example["input_ids"]) == prompt + response + [r.ids.eos]
    assert trained_text(r, example) == [*response, r.ids.eos]


def test_a_plain_template_from_the_spec_frames_the_prompt():
    r = renderer("tiny-decoder")
    r = Renderer(r.tokenizer, r.ids, False, 256, None, "Q: {prompt}\nA: ")
    example = r.example([{"role": "user", "content": "{x}"}, {"role": "assistant", "content": "y"}])
    assert example is not None
    assert r.tokenizer.decode(list(example["input_ids"][:-1])) == "Q: {x}\nA: y"


def test_encoder_decoder_examples_put_the_prompt_in_the_encoder():
    r = renderer("tiny-bart")
    example = r.example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert example is not None
    prompt = r.tokenizer.encode(PLAIN_PROMPT.format(prompt="hi"), add_special_tokens=False).ids
    assert list(example["input_ids"]) == [r.ids.bos, *prompt, r.ids.eos]
    target = [*r.tokenizer.encode("yo", add_special_tokens=False).ids, r.ids.eos]
    assert list(example["labels"]) == target
    assert list(example["decoder_input_ids"]) == [r.ids.decoder_start, *target[:-1]]


def test_a_chat_template_trains_the_assistant_turns_with_their_end_of_turn():
    template = ChatTemplate(CHATML, "", "")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    segments = template.segments(messages)
    assert "".join(text for text, _ in segments) == template.render(messages, False)
    assert [text for text, trained in segments if trained] == [
        "Hello<|im_end|>\n",
        "Ciao<|im_end|>\n",
    ]


def test_a_template_that_does_not_render_incrementally_is_refused():
    # renders the last message first: a conversation's text does not start with its first turns'
    template = ChatTemplate("{% for m in messages|reverse %}{{ m.content }};{% endfor %}")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(InstructionError, match="incrementally"):
        template.segments(messages)


def test_a_template_cannot_reach_python_internals():
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InstructionError, match="cannot render"):
        template.render([{"role": "user", "content": "x"}], False)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"prompt": "p"}', "missing response"),
        ('{"prompt": "p", "response": 3}', "response must be a string"),
        ('{"prompt": "p", "response": "r", "extra": 1}', "unexpected field(s) extra"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role is 'bot'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ],
)
def test_a_malformed_record_is_refused_naming_its_file_and_line(
    tmp_path: Path, line: str, says: str
):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n' + line + "\n")
    with pytest.raises(InstructionError) as caught:
        read_conversations(path)
    assert f"{path}:3: " in str(caught.value)
    assert says in str(caught.value)


def test_a_data_directory_is_its_jsonl_files_and_needs_one(tmp_path: Path):
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert jsonl_files([tmp_path]) == [tmp_path / "b.jsonl", tmp_path / "sub" / "a.jsonl"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InstructionError, match="a directory without"):
        jsonl_files([tmp_path / "empty"])


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(InstructionError, match=f"{path}:2: not UTF-8"):
        read_conversations(path)


def test_examples_too_long_for_seq_len_are_cut_or_dropped():
    r = renderer("tiny-decoder", seq_len=40)
    long_prompt = [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]
    fits = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "z" * 100}]
    examples, dropped = r.examples([long_prompt, fits])
    assert dropped == 1
    assert len(examples) == 1 and len(examples[0]["input_ids"]) == 40


def test_epoch_order_is_a_seeded_permutation():
    lengths = list(range(37))
    first = epoch_order(lengths, 4, seed=3, epoch=0)
    assert sorted(first.tolist()) == lengths
    assert np.array_equal(first, epoch_order(lengths, 4, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(lengths, 4, seed=3, epoch=1))


@pytest.fixture(scope="module")
def decoder():
    import torch

    spec = llmspec.load_spec(SPECS / "tiny-decoder.yaml")
    torch.manual_seed(0)
    return llmspec.build(spec, dtype="fp32").eval()


DECODER_RENDERER = renderer("tiny-decoder", seq_len=256)
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)


@settings(max_examples=12, deadline=None)
@given(
    pairs=st.lists(st.tuples(TEXT, TEXT.filter(bool)), min_size=1, max_size=3),
)
def test_masked_positions_never_contribute_to_the_gradient(decoder, pairs):
    import torch

    r = DECODER_RENDERER
    examples = [
        r.example([{"role": "user", "content": p}, {"role": "assistant", "content": a}])
        for p, a in pairs
    ]
    batch = to_torch(collate([e for e in examples if e is not None], r.ids.pad or 0))
    output = decoder(**batch)
    logits = output.logits
    logits.retain_grad()
    output.loss.backward()
    grad = logits.grad.abs().sum(-1)  # (B, T)
    # position t is scored against label t + 1; the last position predicts nothing
    target = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], -100)], 1)
    masked = target == IGNORE
    assert torch.all(grad[masked] == 0)
    assert torch.all(grad[~masked] > 0)


def test_lora_settings_parse_from_their_text():
    assert parse_lora("r=16,alpha=32,targets=q_proj,v_proj,o_proj") == LoraSettings(
        r=16, alpha=32, targets=("q_proj", "v_proj", "o_proj")
    )
    assert parse_lora("dropout=0.1") == LoraSettings(dropout=0.1)
    for bad, says in [
        ("rank=4", "unknown key 'rank'"),
        ("r=x", "is not a number"),
        ("r=0", "r must be at least 1"),
        ("targets=", "at least one module"),
        ("r=4,oops", "'oops' is not key=value"),
    ]:
        with pytest.raises(TrainError, match=says):
            parse_lora(bad)


def test_records_round_trip_through_jsonl(tmp_path: Path):
    records: list[dict[str, Any]] = [
        {"prompt": "p", "response": "r"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(rec) + "\n" for rec in records))
    assert read_conversations(path) == [
        [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}],
        records[1]["messages"],
    ]
