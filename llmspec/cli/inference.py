"""What the verbs that run artifacts (``generate``, ``fill-mask``, ``embed``) share.

They need only the runtime (onnxruntime, numpy, tokenizers) and the base install: nothing
here imports torch, onnx, jinja2 or transformers, and ``runtime`` itself is imported when a verb
runs, not when the parser is built.

Exit status: 0 success; 1 bad input (an artifact that is missing, modified or of the wrong
family, a bad prompt, chain, examples file or template, a device that is not usable); 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import runtime
from llmspec.errors import EXIT_USAGE


def usage(verb: str, message: str) -> int:
    print(f"llmspec {verb}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def load(verb: str, args: argparse.Namespace, family: tuple[str, ...]) -> Any:
    """The loaded model; raises a bad-input error for a model of another family."""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", runtime.DeviceFallbackWarning)
        model = runtime.load(args.artifact, device=args.device, threads=args.threads)
    for warning in caught:
        print(f"llmspec {verb}: warning: {warning.message}", file=sys.stderr)
    if model.manifest.architecture not in family:
        hint = "fill-mask or embed" if isinstance(model, runtime.EncoderModel) else "generate"
        raise runtime.RuntimeInputError(
            f"{args.artifact}: {model.manifest.architecture} models cannot {verb}; "
            f"use llmspec {hint}"
        )
    return model
