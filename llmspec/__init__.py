"""llmspec: a declarative, spec-driven model compiler for transformer language models."""

from llmspec.errors import Problem, SpecError
from llmspec.loader import dump_spec, load_spec, spec_sha256
from llmspec.spec import ModelSpec

__version__ = "0.1.0"
__all__ = [
    "ModelSpec",
    "Problem",
    "SpecError",
    "__version__",
    "dump_spec",
    "load_spec",
    "spec_sha256",
]
