"""An OpenAI-compatible HTTP server over any artifact: ``llmspec serve`` and :func:`serve`.

Needs the ``serve`` extra (``pip install 'llmspec[serve]'``: starlette, uvicorn,
prometheus-client, jinja2 for chat templates); ``import runtime`` never imports this package.
The app is :func:`runtime.server.app.create_app` (routes, handlers, errors); requests are
:mod:`runtime.server.protocol`, chat templates :mod:`runtime.server.chat`, sampling fields to
a chain :mod:`runtime.server.sampling`, the engine's events to an HTTP answer (streamed or
whole, cancelled when the client goes away) :mod:`runtime.server.generation`, OpenAI's response
shapes :mod:`runtime.server.responses`, metrics :mod:`runtime.server.metrics`. Generation runs on
:class:`runtime.batching.Engine` (continuous batching).

Scale out with replicas behind any HTTP load balancer (DESIGN.md): one process serves one
artifact. SIGTERM (and Ctrl-C) stop accepting connections, let the open responses (streams
included) finish, drain the engine and exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from runtime.model import load
from runtime.server.app import create_app

__all__ = ["create_app", "serve"]


def serve(
    model: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    log_level: str = "info",
) -> None:
    """Serve ``model`` (a loaded artifact, or an artifact's path, loaded on the default
    device) on ``host:port`` until SIGTERM or SIGINT; see :func:`create_app` for the rest."""
    if isinstance(model, str | Path):
        model = load(model)
    app = create_app(model, api_key=api_key, max_batch=max_batch, max_queue=max_queue)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    _Server(config).run()


class _Server(uvicorn.Server):
    """uvicorn's server, whose graceful shutdown on SIGTERM ends :meth:`run` normally (so
    ``llmspec serve`` exits 0) instead of raising the signal again once done, as uvicorn does
    (the process would die of it); SIGINT still ends in KeyboardInterrupt (exit 130)."""

    interrupted = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.interrupted:
            raise KeyboardInterrupt

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.interrupted = self.interrupted or sig == signal.SIGINT
        self.handle_exit(sig, frame)
