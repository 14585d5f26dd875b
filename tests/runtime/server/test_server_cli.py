"""``llmspec serve`` as a process: it serves on 127.0.0.1, and SIGTERM stops it accepting,
lets the open stream finish, and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from llmspec.cli import main

LONG = 1000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_stops_accepting_finishes_the_open_stream_and_exits_0(chat_artifact):
    port = _free_port()
    command = [sys.executable, "-m", "llmspec", "serve", str(chat_artifact("tiny-gpt"))]
    command += ["--port", str(port), "--device", "cpu", "--max-batch", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        body = {
            "prompt": "hi",
            "max_tokens": LONG,
            "logit_bias": {"1": -100},  # no eos: it runs to its length
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.Client(timeout=60) as client:
            url = f"http://127.0.0.1:{port}/v1/completions"
            with client.stream("POST", url, json=body) as response:
                lines = response.iter_lines()
                first = next(line for line in lines if line)
                assert first.startswith("data: {")
                os.kill(process.pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while not _refused(port):  # it stops accepting ...
                    assert time.monotonic() < deadline, "the server still accepts connections"
                    time.sleep(0.01)
                events = [line[6:] for line in lines if line]  # ... and the stream goes on
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks[-1]["usage"]["completion_tokens"] == LONG
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert "Traceback" not in stderr


def test_serve_reports_a_missing_artifact_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing"), "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("llmspec serve: ") and "nothing" in error
    assert "Traceback" not in error


def test_serve_without_its_extra_says_how_to_install_it(tiny_artifact, monkeypatch, capsys):
    for name in [
        m for m in sys.modules if m == "runtime.server" or m.startswith("runtime.server.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", str(tiny_artifact("tiny-gpt")), "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert "uvicorn is missing" in error and "pip install 'llmspec[serve]'" in error


@pytest.mark.parametrize("option", ["--max-batch=0", "--max-queue=-1", "--port=x"])
def test_serve_refuses_bad_options_as_usage_errors(option, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["serve", str(tmp_path), option])
    assert caught.value.code == 2
