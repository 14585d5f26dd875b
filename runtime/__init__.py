"""The deployable engine: reads llmspec artifacts and runs them on ONNX Runtime.

Never imports torch, onnx, jinja2 or transformers. ``runtime.load(path)`` returns a model for
the artifact's family (see :mod:`runtime.model`)::

    import runtime

    model = runtime.load("artifacts/tiny-gpt", device="auto")
    result = model.generate(["Once upon", "The answer"], max_new_tokens=32, chain="greedy")
    print(result.texts, result.finish_reasons, result.timing.per_token_ms)
"""

from runtime.artifact import ArtifactError
from runtime.decoding import DecodingChain, DecodingError
from runtime.generation import (
    GenerationResult,
    GenerationStream,
    RuntimeInputError,
    StreamEvent,
    Timing,
)
from runtime.model import DecoderModel, EncoderModel, MaskCandidate, Seq2SeqModel, load
from runtime.session import DeviceError, DeviceFallbackWarning

__all__ = [
    "ArtifactError",
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
    "load",
]
