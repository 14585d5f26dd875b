"""The server under bad input and load, over raw HTTP (httpx): OpenAI-shaped 400s naming the
field, 401 for a missing or wrong key, 429 with Retry-After when the queue is full, a
disconnecting client's row freed, metrics, and a soak of mixed requests each answered once."""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

LONG = 1000  # new tokens of a generation that is still running when the test acts on it
NO_EOS = {"1": -100}  # tiny-gpt's eos (id 1) banned: a long generation runs to its length


@pytest.fixture(scope="module")
def http():
    """One client for the module (pooled connections; a fresh client costs ~0.1 s)."""
    with httpx.Client(timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _wait_until(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def _idle(engine) -> bool:
    stats = engine.stats
    return stats.queued == 0 and stats.running == 0 and stats.prefilling == 0


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "bogus": 1}, "bogus", "unknown"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": [4]}, "max_tokens", "integer"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 1023}, "max_tokens", "context window"),
        ("/v1/completions", {"prompt": [5, 999]}, "prompt", "outside the vocabulary"),
        ("/v1/completions", {"prompt": [[5], [999]]}, "prompt.1", "id 999 at position 0"),
        ("/v1/completions", {"prompt": ["ok", [5]]}, "prompt", "list of token ids"),
        ("/v1/completions", {"prompt": "hi", "logit_bias": {"999": 5}}, "logit_bias", "outside"),
        ("/v1/chat/completions", {"messages": []}, "messages", "empty"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "n": "2"}, "n", "integer"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1023},
            "max_completion_tokens",
            "context window",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x" * 1100}]},
            "messages",
            "context window",
        ),
        (
            "/v1/completions",
            {"prompt": "hi", "stream_options": {"include_usage": True}},
            "stream_options",
            "stream: true",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
            "top_logprobs",
            "logprobs",
        ),
    ],
)
def test_bad_requests_get_openai_shaped_400s_naming_the_field(
    http, gpt_server, path, body, param, words
):
    error = _error(http.post(gpt_server.url + path, json=body))
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_bad_json_and_a_wrong_method_and_route_answer_in_openais_shape(http, gpt_server):
    url = gpt_server.url
    error = _error(http.post(url + "/v1/completions", content=b'{"prompt": "x",'))
    assert "not valid JSON" in error["message"]
    assert "not allowed" in _error(http.get(url + "/v1/completions"), 405)["message"]
    assert "/v1/chat/completions" in _error(http.get(url + "/v1/nothing"), 404)["message"]


def test_a_family_asked_for_what_it_cannot_do_is_a_400(http, gpt_server, encoder_server):
    error = _error(http.post(encoder_server.url + "/v1/completions", json={"prompt": "x"}))
    assert "encoder-only" in error["message"]
    error = _error(http.post(gpt_server.url + "/v1/embeddings", json={"input": "x"}))
    assert "encoder-only model" in error["message"]


def test_an_artifact_whose_tokenizer_fails_answers_500_and_the_server_goes_on(
    http, serve, tmp_path, chat_artifact
):
    import runtime
    from runtime import artifact as fmt

    root = tmp_path / "artifact"
    shutil.copytree(chat_artifact("tiny-gpt"), root)
    tokenizer = json.loads((root / fmt.TOKENIZER).read_text())
    # a Replace whose regex matches the empty string: the tokenizers library panics on any text
    tokenizer["normalizer"] = {"type": "Replace", "pattern": {"Regex": "x*"}, "content": "y"}
    (root / fmt.TOKENIZER).write_text(json.dumps(tokenizer))
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    info = fmt.file_info(root / fmt.TOKENIZER)
    manifest["files"][fmt.TOKENIZER] = {"size": info.size, "sha256": info.sha256}
    (root / fmt.MANIFEST).write_text(json.dumps(manifest))
    served = serve(runtime.load(root, device="cpu"))
    url = served.url + "/v1/completions"
    error = _error(http.post(url, json={"prompt": "hi", "max_tokens": 2}), 500)
    assert error["type"] == "server_error" and "tokenizer.json" in error["message"]
    # token ids need no tokenizing: the server still answers them
    assert http.post(url, json={"prompt": [5, 6], "max_tokens": 2}).status_code == 200


def test_a_missing_or_wrong_api_key_is_a_401_and_the_right_one_passes(http, serve, gpt):
    served = serve(gpt, api_key="s3cret-key")
    url = served.url + "/v1/completions"
    body = {"prompt": "hi", "max_tokens": 2}
    assert "no API key" in _error(http.post(url, json=body), 401)["message"]
    wrong = {"Authorization": "Bearer s3cret-kez"}
    assert _error(http.post(url, json=body, headers=wrong), 401)["code"] == "invalid_api_key"
    right = {"Authorization": "Bearer s3cret-key"}
    assert http.post(url, json=body, headers=right).status_code == 200
    assert http.get(served.url + "/health").json() == {"status": "ok"}  # no key needed


def _stream_first_chunk(client: httpx.Client, url: str, body: dict):
    """Open a streaming request and read its first event; returns the open response and its
    lines (which must stay referenced: dropping the iterator closes the response)."""
    response = client.send(client.build_request("POST", url, json=body), stream=True)
    assert response.status_code == 200, response.read()
    lines = response.iter_lines()
    first = next(line for line in lines if line)
    assert first.startswith("data: {")
    return response, lines


def test_a_full_queue_answers_429_with_retry_after(serve, gpt):
    served = serve(gpt, max_batch=1, max_queue=1)
    url = served.url + "/v1/completions"
    long = {"prompt": "hi", "max_tokens": LONG, "logit_bias": NO_EOS, "stream": True}
    with httpx.Client(timeout=30) as client:
        running, _lines = _stream_first_chunk(client, url, long)  # holds the one row
        waiting = client.send(client.build_request("POST", url, json=long), stream=True)
        assert waiting.status_code == 200  # queued
        refused = client.post(url, json={"prompt": "hi", "max_tokens": 2})
        error = _error(refused, 429)
        assert error["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        running.close()
        waiting.close()
    _wait_until(lambda: _idle(served.engine), "the cancelled requests left the engine")


def test_a_client_that_disconnects_mid_stream_frees_its_row(gpt_server):
    engine = gpt_server.engine
    _wait_until(lambda: _idle(engine), "the engine is idle")
    before = engine.stats.tokens
    metrics = gpt_server.server.metrics
    cancelled = metrics.cancelled._value.get()
    body = {"prompt": "hi", "max_tokens": LONG, "logit_bias": NO_EOS, "stream": True}
    with httpx.Client(timeout=30) as client:
        response, _lines = _stream_first_chunk(client, gpt_server.url + "/v1/completions", body)
        _wait_until(lambda: engine.stats.tokens - before >= 8, "a few tokens were generated")
        assert engine.stats.running == 1
        response.close()  # the client goes away
    _wait_until(lambda: _idle(engine), "the row was freed")
    assert engine.stats.tokens - before < LONG  # it stopped early
    assert metrics.cancelled._value.get() == cancelled + 1


def test_a_client_that_disconnects_before_a_whole_answer_frees_its_row(gpt_server):
    engine = gpt_server.engine
    _wait_until(lambda: _idle(engine), "the engine is idle")
    before = engine.stats.tokens
    body = json.dumps({"prompt": "hi", "max_tokens": LONG, "logit_bias": NO_EOS}).encode()
    host, port = gpt_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:  # raw HTTP/1.1
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        connection.sendall(head.encode() + body)
        _wait_until(lambda: engine.stats.tokens - before >= 8, "a few tokens were generated")
    _wait_until(lambda: _idle(engine), "the row was freed")  # the client went away
    assert engine.stats.tokens - before < LONG


def test_metrics_count_requests_tokens_and_latencies_in_prometheus_text(http, gpt_server):
    body = {"prompt": "hi", "max_tokens": 3, "temperature": 0}
    assert http.post(gpt_server.url + "/v1/completions", json=body).status_code == 200
    text = http.get(gpt_server.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['llmspec_requests_total{endpoint="completions",status="200"}'] >= 1
    assert samples["llmspec_completion_tokens_total"] >= 3
    assert samples["llmspec_prompt_tokens_total"] >= 2
    assert samples["llmspec_time_to_first_token_seconds_count"] >= 1
    assert samples["llmspec_inter_token_latency_seconds_count"] >= 2
    assert samples["llmspec_queue_depth"] == 0
    assert "llmspec_running_rows" in samples


def _one_request(http: httpx.Client, url: str, number: int) -> tuple[int, str, int, int]:
    """Request ``number`` of the soak, of a kind chosen by its number; returns (number, kind,
    the HTTP status, the count of answers it got: finished choices and [DONE]s)."""
    kind = ("completion", "completion-stream", "chat", "chat-stream", "bad")[number % 5]
    chat = {"messages": [{"role": "user", "content": f"request {number}"}]}
    body: dict = {"max_tokens": 1 + number % 4, "seed": number}
    if kind.startswith("chat"):
        body.update(chat, n=2 if kind == "chat" else 1)
        path = "/v1/chat/completions"
    else:
        body["prompt"] = f"request {number}"
        path = "/v1/completions"
    if kind == "bad":
        body["bogus"] = True
    if kind.endswith("stream"):
        body["stream"] = True
        with http.stream("POST", url + path, json=body) as response:
            events = [line[6:] for line in response.iter_lines() if line]
        done = events.count("[DONE]")
        finished = sum(
            1
            for event in events
            if event != "[DONE]"
            for choice in json.loads(event)["choices"]
            if choice["finish_reason"]
        )
        assert events[-1] == "[DONE]"
        return number, kind, response.status_code, finished + done
    response = http.post(url + path, json=body)
    if response.status_code != 200:
        return number, kind, response.status_code, 1
    return number, kind, 200, len(response.json()["choices"])


def _answered(served) -> float:
    """The server's count of answered requests (every endpoint and status)."""
    (family,) = served.server.metrics.requests.collect()
    return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))


def test_a_soak_of_mixed_concurrent_requests_answers_each_exactly_once(http, gpt_server):
    requests = 200
    before = _answered(gpt_server)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: _one_request(http, gpt_server.url, n), range(requests)))
    assert sorted(number for number, *_ in results) == list(range(requests))
    expected = {"completion": 1, "completion-stream": 2, "chat": 2, "chat-stream": 2, "bad": 1}
    for number, kind, status, answers in results:
        assert status == (400 if kind == "bad" else 200), (number, kind)
        assert answers == expected[kind], (number, kind, answers)
    assert _answered(gpt_server) - before == requests  # the server counted each once
    _wait_until(lambda: _idle(gpt_server.engine), "the engine is idle")
