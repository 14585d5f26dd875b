"""llmspec: a declarative, spec-driven model compiler for transformer language models."""

import importlib
from typing import Any

from llmspec.errors import Problem, SpecError
from llmspec.spec.loading import dump_spec, load_spec, spec_sha256
from llmspec.spec.sections import ModelSpec

__version__ = "0.1.0"
__all__ = [
    "ModelSpec",
    "Problem",
    "SpecError",
    "__version__",
    "build",
    "dump_spec",
    "export",
    "finetune",
    "generate_source",
    "load_spec",
    "spec_sha256",
    "train",
]


# The compiling entry points need torch, jinja2 and onnx: they are imported on first use, so
# that `import llmspec` (and the runtime-only command line) stays light.
_LAZY = {
    "build": "llmspec.builder",
    "generate_source": "llmspec.builder",
    "export": "llmspec.exporter.pipeline",
    "train": "llmspec.trainer.loop",
    "finetune": "llmspec.trainer.finetune",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmspec' has no attribute {name!r}")
