"""The deployable engine: reads llmspec artifacts and runs them on ONNX Runtime.

Never imports torch, onnx, jinja2 or transformers. ``runtime.load(path)`` returns a model for
the artifact's family (see :mod:`runtime.model`)::

    import runtime

    model = runtime.load("artifacts/tiny-gpt", device="auto")
    result = model.generate(["Once upon", "The answer"], max_new_tokens=32, chain="greedy")
    print(result.texts, result.finish_reasons, result.timing.per_token_ms)
"""

import importlib
from typing import TYPE_CHECKING, Any

from runtime.artifact import ArtifactError
from runtime.decoding import DecodingChain, DecodingError
from runtime.errors import RuntimeInputError
from runtime.results import GenerationResult, GenerationStream, StreamEvent, Timing, TokenLogprob

if TYPE_CHECKING:
    from runtime.model import DecoderModel, EncoderModel, MaskCandidate, Seq2SeqModel, load
    from runtime.session import DeviceError, DeviceFallbackWarning
    from runtime.structured import Constraint

# The names that need ONNX Runtime are imported on first use, so that the compiler's use of
# runtime's light modules (runtime.reading, runtime.memory, ...) does not load ONNX Runtime
# into every training process.
_LAZY = {
    "DecoderModel": "runtime.model",
    "EncoderModel": "runtime.model",
    "MaskCandidate": "runtime.model",
    "Seq2SeqModel": "runtime.model",
    "load": "runtime.model",
    "DeviceError": "runtime.session",
    "DeviceFallbackWarning": "runtime.session",
    "Constraint": "runtime.structured",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "Constraint",
    "DecoderModel",
    "DecodingChain",
    "DecodingError",
    "DeviceError",
    "DeviceFallbackWarning",
    "EncoderModel",
    "GenerationResult",
    "GenerationStream",
    "MaskCandidate",
    "RuntimeInputError",
    "Seq2SeqModel",
    "StreamEvent",
    "Timing",
    "TokenLogprob",
    "load",
]
