"""Zero-, one- and few-shot prompts from a template and JSONL examples."""

import pytest

from llmspec.prompts import (
    DEFAULT_TEMPLATE,
    Example,
    PromptError,
    Template,
    build_prompt,
    few_shot_prompts,
    read_examples,
    read_template,
)

TEMPLATE = Template.parse("Review: {input}\nSentiment: {output}")
EXAMPLES = [
    Example("great film", "positive"),
    Example("dull", "negative"),
    Example("ok", "neutral"),
]


def test_zero_shot_is_the_query_laid_out_up_to_the_output():
    assert build_prompt(TEMPLATE, EXAMPLES, "loved it", 0) == "Review: loved it\nSentiment: "


def test_one_shot():
    assert build_prompt(TEMPLATE, EXAMPLES, "loved it", 1) == (
        "Review: great film\nSentiment: positive\n\nReview: loved it\nSentiment: "
    )


def test_few_shot_takes_the_first_k_examples_in_order():
    assert build_prompt(TEMPLATE, EXAMPLES, "loved it", 2) == (
        "Review: great film\nSentiment: positive\n\n"
        "Review: dull\nSentiment: negative\n\n"
        "Review: loved it\nSentiment: "
    )


def test_more_shots_than_examples_is_an_error():
    with pytest.raises(PromptError, match="4 shots asked for, but there are only 3 examples"):
        build_prompt(TEMPLATE, EXAMPLES, "q", 4)
    with pytest.raises(PromptError, match="shots must be a whole number >= 0"):
        build_prompt(TEMPLATE, EXAMPLES, "q", -1)


def test_literal_braces_and_text_after_the_output():
    template = Template.parse('{{"q": "{input}"}} -> {output}.')
    assert template.render(Example("a", "b")) == '{"q": "a"} -> b.'
    assert (
        build_prompt(template, [Example("a", "b")], "c", 1) == '{"q": "a"} -> b.\n\n{"q": "c"} -> '
    )


def test_braces_in_examples_and_queries_are_text():
    prompt = build_prompt(TEMPLATE, [Example("{output}", "{x}")], "{input}", 1)
    assert prompt == "Review: {output}\nSentiment: {x}\n\nReview: {input}\nSentiment: "


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Q: {input}", "needs the field {output} exactly once, found it 0 times"),
        ("{input} {output} {output}", "needs the field {output} exactly once, found it 2 times"),
        ("{input} {answer}", "unknown field {answer}"),
        ("{output} {input}", "{output} must come after {input}"),
        ("{input:>10} {output}", "without a format spec"),
        ("{input!r} {output}", "without a format spec"),
        ("{input} {output", "write literal braces as {{ and }}"),
    ],
)
def test_bad_templates(text, message):
    with pytest.raises(PromptError, match=message.replace("{", "\\{").replace("}", "\\}")):
        Template.parse(text)


def test_template_files_lose_their_final_newline(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Q: {input}\nA: {output}\n")
    assert read_template(path).render(Example("x", "y")) == "Q: x\nA: y"
    path.write_text("{input}")
    with pytest.raises(PromptError, match=f"{path}: the template needs the field"):
        read_template(path)


def test_examples_file_skips_blank_lines_and_ignores_other_keys(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "a", "output": "b", "id": 1}\n\n  \n{"input": "c", "output": "d"}\n')
    assert read_examples(path) == [Example("a", "b"), Example("c", "d")]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"input": "a", "output": "b"}\n{"input": "c"\n', ":2: not valid JSON"),
        ('{"input": "a", "output": "b"}\n\n["a", "b"]\n', ":3: expected a JSON object"),
        ('{"input": "a"}\n', ":1: missing 'output'"),
        ('{"input": 1, "output": "b"}\n', ":1: 'input' must be a string"),
    ],
)
def test_a_bad_examples_line_is_named_with_its_number(tmp_path, lines, message):
    path = tmp_path / "e.jsonl"
    path.write_text(lines)
    with pytest.raises(PromptError, match=f"{path}{message}"):
        read_examples(path)


def test_few_shot_prompts_defaults_to_every_example_and_the_default_template(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n')
    assert DEFAULT_TEMPLATE == "Input: {input}\nOutput: {output}"
    assert few_shot_prompts(["q1", "q2"], path) == [
        "Input: a\nOutput: b\n\nInput: c\nOutput: d\n\nInput: q1\nOutput: ",
        "Input: a\nOutput: b\n\nInput: c\nOutput: d\n\nInput: q2\nOutput: ",
    ]
    assert few_shot_prompts(["q"], path, shots=0) == ["Input: q\nOutput: "]
