"""Served tiny artifacts for the server's tests: real chat templates, real uvicorn, 127.0.0.1.

``chat_artifact("tiny-gpt")`` and ``chat_artifact("tiny-t5")`` are tiny artifacts with a real
model's chat template: Llama 2 chat's for the decoder (it uses bos_token, eos_token and
raise_exception) and ChatML (Qwen2's, with add_generation_prompt) for the encoder-decoder (a
copy of the session's tiny-t5 artifact with the template listed in its manifest). The
decoder's context is widened to 1024 tokens, so that a long generation (a thousand tokens, most
of a second on a CPU) is still running when a test disconnects, fills the queue or sends
SIGTERM.

``serve(model, **options)`` starts ``create_app(model, **options)`` under uvicorn in a thread
on 127.0.0.1 (a port the system picks) and returns a :class:`Served` (its base URL and the
app's :class:`runtime.server.app.Server`); every server is shut down at the session's end.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chat_templates import CHATML_TEMPLATE, LLAMA2_TEMPLATE

SPECS = Path(__file__).resolve().parents[3] / "specs"

TEMPLATES = {"tiny-gpt": LLAMA2_TEMPLATE, "tiny-t5": CHATML_TEMPLATE}
LONG_CONTEXT = 1024


@pytest.fixture(scope="session")
def chat_artifact(tmp_path_factory, tiny_artifact):
    """``chat_artifact(name)``: the path of the tiny spec's artifact with a chat template."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = (_long_decoder if name == "tiny-gpt" else _with_template)(
                name, tmp_path_factory, tiny_artifact
            )
        return made[name]

    return make


def _long_decoder(name: str, tmp_path_factory: Any, tiny_artifact: Any) -> Path:
    """The decoder with a 1024-token context, exported from a model directory that has a
    chat_template.jinja, as ``llmspec import-hf`` writes one."""
    import torch
    from safetensors.torch import save_file

    import llmspec
    from llmspec.exporter.pipeline import export

    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    spec["context_length"] = LONG_CONTEXT
    spec["positions"]["max_positions"] = LONG_CONTEXT
    source = tmp_path_factory.mktemp("chat-source") / name
    source.mkdir()
    (source / "spec.yaml").write_text(yaml.safe_dump(spec))
    (source / "chat_template.jinja").write_text(TEMPLATES[name])
    torch.manual_seed(0)
    model = llmspec.build(source / "spec.yaml", dtype="fp32")
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    save_file(state, str(source / "weights.safetensors"))
    target = tmp_path_factory.mktemp("chat-artifact") / name
    return export(source, target, progress=lambda line: None)


def _with_template(name: str, tmp_path_factory: Any, tiny_artifact: Any) -> Path:
    """A copy of the session's artifact with chat_template.jinja added and listed in its
    manifest, as the exporter lists it (saves exporting the model again)."""
    from runtime import artifact as fmt

    root = tmp_path_factory.mktemp("chat-artifact") / name
    shutil.copytree(tiny_artifact(name), root)
    (root / fmt.CHAT_TEMPLATE).write_text(TEMPLATES[name])
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    info = fmt.file_info(root / fmt.CHAT_TEMPLATE)
    manifest["files"][fmt.CHAT_TEMPLATE] = {"size": info.size, "sha256": info.sha256}
    (root / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return root


@dataclass
class Served:
    url: str
    server: Any  # runtime.server.app.Server

    @property
    def engine(self) -> Any:
        return self.server.engine


@pytest.fixture(scope="session")
def serve():
    """``serve(model, **create_app_options)``: a running server (shut down at the end)."""
    import uvicorn

    from runtime.server import create_app

    running: list[tuple[Any, threading.Thread]] = []

    def start(model: Any, **options: Any) -> Served:
        app = create_app(model, **options)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        running.append((server, thread))
        port = server.servers[0].sockets[0].getsockname()[1]
        return Served(f"http://127.0.0.1:{port}", app.state.server)

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, thread in running:
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def gpt(chat_artifact):
    import runtime

    return runtime.load(chat_artifact("tiny-gpt"), device="cpu")


@pytest.fixture(scope="session")
def t5(chat_artifact):
    import runtime

    return runtime.load(chat_artifact("tiny-t5"), device="cpu")


@pytest.fixture(scope="session")
def encoder(tiny_artifact):
    import runtime

    return runtime.load(tiny_artifact("tiny-encoder"), device="cpu")


@pytest.fixture(scope="session")
def gpt_server(serve, gpt) -> Served:
    return serve(gpt)


@pytest.fixture(scope="session")
def t5_server(serve, t5) -> Served:
    return serve(t5)


@pytest.fixture(scope="session")
def encoder_server(serve, encoder) -> Served:
    return serve(encoder)


def _sse_events(lines: Any) -> list[Any]:
    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture(scope="session")
def sse_events():
    """``sse_events(lines)``: the data of a server-sent event stream's lines, each a JSON object
    or the string ``[DONE]``."""
    return _sse_events
