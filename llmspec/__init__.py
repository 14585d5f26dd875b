"""llmspec: a declarative, spec-driven model compiler for transformer language models."""

from typing import Any

from llmspec.errors import Problem, SpecError
from llmspec.loader import dump_spec, load_spec, spec_sha256
from llmspec.spec import ModelSpec

__version__ = "0.1.0"
__all__ = [
    "ModelSpec",
    "Problem",
    "SpecError",
    "__version__",
    "build",
    "dump_spec",
    "generate_source",
    "load_spec",
    "spec_sha256",
    "train",
]


def __getattr__(name: str) -> Any:
    # build and generate_source need torch and jinja2: they are imported on first use, so
    # that `import llmspec` stays light. `llmspec.build` is also the name of the module that
    # defines them; that module is callable as its build function.
    if name in ("build", "generate_source"):
        import importlib

        module = importlib.import_module("llmspec.build")
        return module if name == "build" else module.generate_source
    if name == "train":  # the module, callable as its train function (as llmspec.build)
        import importlib

        return importlib.import_module("llmspec.train")
    raise AttributeError(f"module 'llmspec' has no attribute {name!r}")
