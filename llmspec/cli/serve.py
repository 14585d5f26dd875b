"""``llmspec serve``: an OpenAI-compatible HTTP server over an artifact (see
:mod:`runtime.server`).

Needs the ``serve`` extra (``pip install 'llmspec[serve]'``). Generative artifacts answer
``/v1/completions`` and ``/v1/chat/completions`` (with continuous batching), encoder-only ones
``/v1/embeddings``. The API key comes from ``--api-key`` or, so that it stays out of the process
list, the environment variable ``LLMSPEC_API_KEY``. SIGTERM stops accepting, finishes the open
streams and exits 0.
"""

from __future__ import annotations

import argparse
import os

from llmspec.cli.arguments import add_device_arguments, non_negative, positive, whole_number
from llmspec.cli.inference import load
from llmspec.errors import EXIT_OK
from runtime.errors import LlmspecError

API_KEY_VARIABLE = "LLMSPEC_API_KEY"


class ServeError(RuntimeError, LlmspecError):
    """The server cannot start (its extra is not installed)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port", type=whole_number(0), default=8000, help="the port (default 8000)"
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on /v1 requests (default: ${API_KEY_VARIABLE}, "
        "else none)",
    )
    parser.add_argument(
        "--max-batch",
        type=positive,
        default=16,
        metavar="N",
        help="requests that decode together at most (default 16)",
    )
    parser.add_argument(
        "--max-queue",
        type=non_negative,
        default=64,
        metavar="N",
        help="requests that may wait for a batch row; beyond it: 429 (default 64)",
    )
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``llmspec serve``."""
    try:
        from runtime.server import serve
    except ImportError as err:
        raise ServeError(
            f"serving needs the serve extra ({err.name} is missing); install it with "
            "pip install 'llmspec[serve]'"
        ) from None
    model = load("serve", args, ("decoder-only", "encoder-decoder", "encoder-only"))
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    serve(
        model,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )
    return EXIT_OK
