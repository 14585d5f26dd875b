"""The real ``openai`` client against served tiny artifacts: streaming completions and chat
completions from a decoder-only and an encoder-decoder model, embeddings from an encoder,
usage, n, logprobs and structured output; each answer checked against the model run directly."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import openai
import pytest

from runtime.server.chat import ChatTemplate
from runtime.server.protocol import ChatMessage

FAMILIES = ["tiny-gpt", "tiny-t5"]


@pytest.fixture(scope="module")
def served(request, gpt, t5, gpt_server, t5_server):
    """name -> (model, served, openai client)"""
    table = {}
    for name, model, server in (("tiny-gpt", gpt, gpt_server), ("tiny-t5", t5, t5_server)):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        table[name] = (model, server, client)
    return table


def _chat_prompt(model, messages: list[dict]) -> list[int]:
    """The ids the server feeds for ``messages``: the rendered template, tokenized as the
    engine does (a decoder's template writes its bos; an encoder's input keeps its framing)."""
    bos = model.special_tokens.get("bos")
    bos_text = "" if bos is None else model.tokenizer.id_to_token(bos)
    eos_text = model.tokenizer.id_to_token(model.special_tokens["eos"])
    text = ChatTemplate(model.chat_template, bos_text, eos_text).render(
        [ChatMessage.model_validate(m) for m in messages]
    )
    if model.manifest.architecture == "encoder-decoder":
        return model._prompt_tokens(text)
    return model.tokenizer.ids(text, add_special_tokens=False)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_openai_client_streams_a_completion_equal_to_generate(served, name):
    model, _, client = served[name]
    # seeded sampling: tiny-t5's greedy choice is its pad token, whose text is empty
    expected = model.generate("Once upon a time", max_new_tokens=12, chain="sample", seed=5)
    assert expected.text
    stream = client.completions.create(
        model=model.manifest.name,
        prompt="Once upon a time",
        max_tokens=12,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    usage = chunks[-1].usage  # the last chunk: no choices, the usage
    assert chunks[-1].choices == []
    assert usage.prompt_tokens == len(expected.prompt_tokens[0])
    assert usage.completion_tokens == len(expected.tokens[0]) == 12
    assert usage.total_tokens == usage.prompt_tokens + 12


@pytest.mark.parametrize("name", FAMILIES)
def test_the_openai_client_streams_a_chat_completion_through_the_chat_template(served, name):
    model, _, client = served[name]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something."},
    ]
    prompt = _chat_prompt(model, messages)
    expected = model.generate(prompt, max_new_tokens=10, chain="sample", seed=7)
    assert expected.text
    stream = client.chat.completions.create(
        model=model.manifest.name,
        messages=messages,
        max_completion_tokens=10,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    finish = {"eos": "stop", "length": "length"}[expected.finish_reasons[0]]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].usage.prompt_tokens == len(prompt)
    assert chunks[-1].usage.completion_tokens == len(expected.tokens[0])


def test_a_chat_that_the_template_refuses_is_a_400_with_the_templates_message(served):
    model, _, client = served["tiny-gpt"]
    with pytest.raises(openai.BadRequestError, match="roles must alternate") as caught:
        client.chat.completions.create(
            model=model.manifest.name,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )
    assert caught.value.body["param"] == "messages"


def test_n_choices_are_seeded_samples_each_as_generate_gives_it_alone(served):
    model, _, client = served["tiny-gpt"]
    messages = [{"role": "user", "content": "Tell me a story."}]
    prompt = _chat_prompt(model, messages)
    answer = client.chat.completions.create(
        model=model.manifest.name, messages=messages, max_tokens=8, n=3, seed=11
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    for choice in answer.choices:
        alone = model.generate(prompt, max_new_tokens=8, chain="sample", seed=11 + choice.index)
        assert choice.message.content == alone.text
        assert choice.message.role == "assistant"
    assert answer.usage.prompt_tokens == len(prompt)  # the prompt once, however many choices
    assert answer.usage.completion_tokens == 3 * 8


def test_a_stop_string_cuts_the_text_and_its_tokens_count_in_usage(served):
    model, _, client = served["tiny-gpt"]
    free = model.generate("Once upon a time", max_new_tokens=16, chain="sample", seed=1).text
    stop = next(  # two ASCII letters in the middle of the free text
        free[i : i + 2]
        for i in range(2, len(free) - 1)
        if free[i : i + 2].isascii() and free[i : i + 2].isalpha()
    )
    expected = model.generate(
        "Once upon a time", max_new_tokens=16, chain="sample", seed=1, stop=stop
    )
    answer = client.completions.create(
        model=model.manifest.name, prompt="Once upon a time", max_tokens=16, seed=1, stop=[stop]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == expected.text == free[: free.index(stop)]
    # the tokens that made the stop string are generated tokens, though not text
    assert answer.usage.completion_tokens == len(expected.tokens[0]) < 16


def test_completion_logprobs_are_the_models_in_openais_shape(served):
    model, _, client = served["tiny-gpt"]
    expected = model.generate("Hello", max_new_tokens=5, chain="greedy", logprobs=2)
    answer = client.completions.create(
        model=model.manifest.name, prompt="Hello", max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    entries = expected.logprobs[0]
    assert logprobs.token_logprobs == pytest.approx([e.logprob for e in entries], abs=1e-6)
    assert logprobs.tokens == [model.tokenizer.decode([e.token], False) for e in entries]
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(5)]


def test_chat_logprobs_have_top_alternatives_most_likely_first_with_bytes(served):
    model, _, client = served["tiny-t5"]
    answer = client.chat.completions.create(
        model=model.manifest.name,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 4
    for entry in content:
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the best
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert entry.logprob <= 0


def test_the_openai_client_gets_embeddings_equal_to_embed(encoder, encoder_server):
    client = openai.OpenAI(base_url=f"{encoder_server.url}/v1", api_key="x", max_retries=0)
    texts = ["the cat sat", "a dog ran far away"]
    answer = client.embeddings.create(model=encoder.manifest.name, input=texts)  # base64
    vectors = np.array([item.embedding for item in answer.data])
    np.testing.assert_allclose(vectors, encoder.embed(texts, normalize=True), atol=1e-6)
    assert [item.index for item in answer.data] == [0, 1]
    floats = client.embeddings.create(
        model=encoder.manifest.name, input="the cat sat", encoding_format="float"
    )
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    framed = sum(len(ids) for ids in encoder.token_ids(texts))
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == framed


def test_models_lists_the_served_artifact_and_another_name_is_a_404(served):
    model, _, client = served["tiny-gpt"]
    assert [m.id for m in client.models.list().data] == [model.manifest.name]
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)


def test_a_json_schema_response_format_gives_json_that_validates(served):
    model, _, client = served["tiny-gpt"]
    schema = {
        "type": "object",
        "properties": {"digit": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["digit"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model=model.manifest.name,
        messages=[{"role": "user", "content": "A digit, as JSON."}],
        max_tokens=40,
        n=2,
        seed=3,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "digit", "schema": schema, "strict": True},
        },
    )
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_a_json_object_response_format_gives_a_json_object(served):
    model, _, client = served["tiny-gpt"]
    close = model.tokenizer.token_to_id("}")
    answer = client.chat.completions.create(
        model=model.manifest.name,
        messages=[{"role": "user", "content": "An object."}],
        max_tokens=16,
        temperature=0,
        logit_bias={str(close): 100},  # among the tokens the grammar allows, "}" first
        response_format={"type": "json_object"},
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert json.loads(choice.message.content) == {}  # without the constraint: "}}}}..."


def test_a_model_without_a_chat_template_gets_a_400_saying_how_to_give_it_one(serve, tiny_artifact):
    import runtime

    served = serve(runtime.load(tiny_artifact("tiny-t5"), device="cpu"))
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="has no chat template") as caught:
        client.chat.completions.create(
            model="tiny-t5", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.code == "no_chat_template"
    assert "chat_template.jinja" in caught.value.message and "import-hf" in caught.value.message
    completion = client.completions.create(model="tiny-t5", prompt="Hi", max_tokens=2)
    assert completion.usage.completion_tokens == 2  # completions need no template
