"""The server's parts without a server: request validation, the chain a request maps to,
logit_bias, and chat templates rendered as transformers renders them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_templates import CHATML_TEMPLATE, LLAMA2_TEMPLATE

from runtime.decoding import (
    FrequencyPenalty,
    Greedy,
    PresencePenalty,
    RepetitionPenalty,
    Sample,
    Temperature,
    TopK,
    TopP,
)
from runtime.sampling import SamplerChain
from runtime.server.chat import ChatTemplate
from runtime.server.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from runtime.server.sampling import LogitBias, decoding_chain


def _refusal(model, body) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as caught:
        parse(model, raw)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


@pytest.mark.parametrize(
    ("model", "body", "param", "words"),
    [
        (CompletionRequest, {"prompt": "a", "max_tokenz": 3}, "max_tokenz", "unknown field"),
        (CompletionRequest, {"prompt": "a", "max_tokens": "3"}, "max_tokens", "valid integer"),
        (CompletionRequest, {"prompt": "a", "max_tokens": True}, "max_tokens", "valid integer"),
        (CompletionRequest, {"prompt": "a", "temperature": 3}, "temperature", "less than"),
        (CompletionRequest, {"prompt": "a", "n": 0}, "n", "greater than"),
        (CompletionRequest, {"prompt": "a", "echo": True}, "echo", "False"),
        (CompletionRequest, {"prompt": "a", "suffix": "b"}, "suffix", "does not support"),
        (CompletionRequest, {"prompt": []}, "prompt", "empty"),
        (CompletionRequest, {"max_tokens": 3}, "prompt", "required"),
        (CompletionRequest, {"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias", "token ids"),
        (CompletionRequest, {"prompt": "a", "stop": ["a"] * 5}, "stop", "at most 4"),
        (ChatCompletionRequest, {"messages": []}, "messages", "messages is empty"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
            "'system'",
        ),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": "hi", "mood": "x"}]},
            "messages.0.mood",
            "known fields here are: content, name, role",
        ),
        (ChatCompletionRequest, {"messages": "hi"}, "messages", "valid array"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": "hi"}], "tools": []},
            "tools",
            "does not support",
        ),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user"}], "response_format": {"type": "yaml"}},
            "response_format",
            "json_schema",
        ),
        (EmbeddingRequest, {"input": []}, "input", "empty"),
        (EmbeddingRequest, {"input": [1, 2]}, "input", "a string or a list of strings"),
    ],
)
def test_a_bad_request_is_a_400_naming_its_field(model, body, param, words):
    error = _refusal(model, body)
    assert error.param is not None and error.param.startswith(param)
    assert words in error.message
    shape = error.body()["error"]
    assert set(shape) == {"message", "type", "param", "code"}


def test_bad_json_and_a_non_object_body_are_400s():
    assert "not valid JSON" in _refusal(CompletionRequest, b'{"prompt": ').message
    assert "JSON object" in _refusal(CompletionRequest, b"[1, 2]").message


def test_prompts_take_every_openai_form():
    for prompt in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert parse(CompletionRequest, json.dumps({"prompt": prompt}).encode()).prompt == prompt


def _chain(**fields):
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], **fields}
    )
    return decoding_chain(body, vocab_size=100).steps


def test_openai_fields_map_onto_the_chain_in_order():
    steps = _chain(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=1.2,
        logit_bias={"5": 3.0},
    )
    assert steps == (
        LogitBias(tokens=(5,), bias=(3.0,)),
        RepetitionPenalty(penalty=1.2),
        PresencePenalty(penalty=0.5),
        FrequencyPenalty(penalty=0.25),
        Temperature(value=0.7),
        TopK(k=40),
        TopP(p=0.9),
        Sample(),
    )


def test_temperature_zero_is_greedy_and_the_defaults_are_openais():
    assert _chain(temperature=0, top_p=0.5, presence_penalty=1.0) == (
        PresencePenalty(penalty=1.0),
        Greedy(),
    )
    assert _chain() == (Sample(),)  # OpenAI's temperature 1, top_p 1


def test_a_logit_bias_token_outside_the_vocabulary_is_refused_by_name():
    with pytest.raises(ApiError, match=r"token 100 is outside the vocabulary \[0, 100\)"):
        _chain(logit_bias={"100": 1.0})


def test_logit_bias_of_100_forces_a_token_and_minus_100_bans_one():
    logits = np.zeros((1, 8), np.float32)
    logits[0, 3] = 5.0
    forced = SamplerChain([LogitBias(tokens=(6,), bias=(100.0,)), Greedy()])
    banned = SamplerChain([LogitBias(tokens=(3,), bias=(-100.0,)), Greedy()])
    for chain, expected in ((forced, 6), (banned, 0)):
        state = chain.start([[1]], 8)
        assert chain.select(logits.copy(), state).tolist() == [expected]


# ----------------------------------------------------------------------------------------
# Chat templates: our sandboxed rendering equals transformers' apply_chat_template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
]


@pytest.mark.parametrize("template", [LLAMA2_TEMPLATE, CHATML_TEMPLATE], ids=["llama2", "chatml"])
def test_a_chat_template_renders_as_transformers_renders_it(template):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1}, unk_token="<s>")),
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.chat_template = template
    theirs = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    messages = ChatCompletionRequest.model_validate({"messages": CONVERSATION}).messages
    ours = ChatTemplate(template, bos_token="<s>", eos_token="</s>").render(messages)
    assert ours == theirs
    assert "Be brief." in ours and "What is 2+2?" in ours


def test_what_a_template_refuses_is_a_400_with_its_message():
    messages = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    ).messages
    with pytest.raises(ApiError, match="Conversation roles must alternate") as caught:
        ChatTemplate(LLAMA2_TEMPLATE, "<s>", "</s>").render(messages)
    assert caught.value.param == "messages"


def test_the_sandbox_keeps_a_template_from_pythons_internals():
    hostile = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    messages = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "a"}]}
    ).messages
    with pytest.raises(ApiError, match="chat template") as caught:
        ChatTemplate(hostile).render(messages)
    assert "object" not in caught.value.message.split("(")[0]


def test_a_template_that_does_not_compile_is_refused_with_its_line():
    from runtime.server.chat import ChatTemplateError

    with pytest.raises(ChatTemplateError, match=r"does not compile: .*\(line 2\)"):
        ChatTemplate("ok\n{% for %}")


def test_import_runtime_loads_no_part_of_the_server_or_its_web_stack():
    import subprocess
    import sys

    web = ("runtime.server", "starlette", "uvicorn", "prometheus_client", "jinja2")
    code = (
        "import sys, runtime, runtime.batching, runtime.model\n"
        f"print(' '.join(m for m in {web!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
