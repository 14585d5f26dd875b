"""ONNX Runtime sessions: choosing the device, opening graphs, running one step.

``onnxruntime-gpu`` lists the CUDA provider even where it cannot run (no driver, no GPU, missing
CUDA libraries) and then silently runs on the CPU. So the device is decided by what a session
really uses (``session.get_providers()``), probed once per process on a 69-byte Identity graph:

* ``device="cpu"``: the CPU provider.
* ``device="cuda"``: the CUDA provider, or :class:`DeviceError` saying why it is not usable.
* ``device="auto"``: CUDA when it really works, else the CPU; falling back from an installed but
  unusable CUDA provider is reported once per process with a :class:`DeviceFallbackWarning`
  (``warnings``), and the model's ``device`` attribute says what is in use.

On CUDA, :class:`Graph` runs with IOBinding: the KV cache (and the encoder's cross keys/values)
stay on the device as ``OrtValue`` s; only the small inputs (token ids, masks, positions) go to
the device and only the logits come back to the host. The self-attention cache is a
:class:`Buffer` allocated once per batch and bound as both the graph's ``past_key_values.*``
input and its ``present.*`` output (on the CPU too), so the graph writes the new positions into
it in place (format 2, see :mod:`llmspec.exporter.rewrites.kv_cache`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from runtime.artifact import ArtifactError
from runtime.errors import LlmspecError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")

# A serialized ONNX model (opset 18) with one Identity node, x -> y: enough to learn whether a
# CUDA session really runs on CUDA, without importing onnx.
_PROBE = bytes.fromhex(
    "08083a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a0a08080112040a"
    "020801620f0a0179120a0a08080112040a02080142040a001012"
)

# numpy dtypes of the ONNX element types a graph's float inputs can have.
NUMPY_DTYPES = {"float": np.float32, "float16": np.float16, "int64": np.int64}


class DeviceError(RuntimeError, LlmspecError):
    """The requested device cannot be used; the message says why and what to do."""


class DeviceFallbackWarning(RuntimeWarning):
    """``device="auto"`` found the CUDA provider installed but not usable and runs on the CPU."""


_probe_lock = threading.Lock()
_cuda_probe: tuple[bool, str] | None = None  # (usable, why not), probed once per process
_fallback_warned = False


def cuda_status() -> tuple[bool, str]:
    """Whether ONNX Runtime really runs graphs on CUDA here, and if not, why (probed once)."""
    global _cuda_probe
    with _probe_lock:
        if _cuda_probe is None:
            _cuda_probe = _probe_cuda()
        return _cuda_probe


def _probe_cuda() -> tuple[bool, str]:
    if CUDA not in ort.get_available_providers():
        return False, (
            f"the installed onnxruntime {ort.__version__} has no CUDA provider "
            "(install onnxruntime-gpu)"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # Loading the CUDA provider logs errors through the default logger when its libraries are
    # missing; the reason is reported by us instead. There is no getter to restore a caller's
    # setting, so it is put back to ONNX Runtime's default (warnings).
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(_PROBE, options, providers=[CUDA])
        providers = session.get_providers()
    except Exception as err:  # ONNX Runtime raises plain RuntimeErrors (no driver, no device)
        return False, f"the CUDA provider failed to start ({err})"
    finally:
        ort.set_default_logger_severity(2)
    if CUDA not in providers:
        return False, (
            "the CUDA provider is installed but ONNX Runtime fell back to the CPU "
            "(no GPU, driver, or matching CUDA/cuDNN libraries)"
        )
    return True, ""


def resolve_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for a requested ``device``; raises DeviceError or ValueError."""
    global _fallback_warned
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    usable, why = cuda_status()
    if usable:
        return "cuda"
    if device == "cuda":
        raise DeviceError(f"device='cuda' was asked for, but {why}; use device='cpu' or 'auto'")
    if CUDA in ort.get_available_providers() and not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"runtime.load(device='auto'): {why}; running on the CPU",
            DeviceFallbackWarning,
            stacklevel=3,  # the caller of runtime.load
        )
    return "cpu"


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


# How ONNX Runtime's IOBinding path words an input the graph refuses.
_REFUSED_INPUT = (
    "Invalid rank for input",
    "Got invalid dimensions for input",
    "Unexpected input",
    "indices element out of data bounds",  # a Gather: positions beyond the graph's table
)

# ONNX element type numbers of the cache types, for OrtValues over numpy memory.
_ONNX_TYPES = {"float": 1, "float16": 10, "bfloat16": 16}


def _raw(array: np.ndarray) -> np.ndarray:
    """``array`` as numpy types ONNX Runtime's Python API takes: bfloat16 (ml_dtypes, 2 bytes
    but not float16) as its bits, uint16."""
    if array.dtype.itemsize == 2 and array.dtype != np.float16:
        return array.view(np.uint16)
    return array


def _bind_inputs(binding: Any, inputs: Mapping[str, np.ndarray], cache: Mapping[str, Any]) -> None:
    """Bind a run's host arrays and its cache values (numpy, or OrtValues where they live)."""
    for name, array in inputs.items():
        binding.bind_cpu_input(name, array)
    for name, value in cache.items():
        if isinstance(value, np.ndarray):
            binding.bind_cpu_input(name, value)
        else:
            binding.bind_ortvalue_input(name, value)


class Buffer:
    """A cache buffer bound in place: the graph reads it as a ``past_key_values.*`` input and
    writes its new positions into the same memory as the matching ``present.*`` output.

    On the CPU, :attr:`array` is the numpy array that owns the memory (bfloat16 as
    ``ml_dtypes.bfloat16``) and :attr:`value` an ``OrtValue`` over it, so host code reads and
    changes the cache without copies. On CUDA only :attr:`value` exists (device memory);
    :meth:`host` and :meth:`load` copy through the host."""

    def __init__(self, value: ort.OrtValue, array: np.ndarray | None) -> None:
        self.value = value
        self.array = array

    @classmethod
    def zeros(cls, shape: tuple[int, ...], onnx_type: str, dtype: Any, device: str) -> Buffer:
        if device == "cpu":
            array = np.zeros(shape, dtype=dtype)
            value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                _raw(array), _ONNX_TYPES[onnx_type]
            )
            return cls(value, array)
        # device memory, typed by its ONNX type number (numpy has no bfloat16), zero-filled
        value = ort.OrtValue.ortvalue_from_shape_and_type(shape, _ONNX_TYPES[onnx_type], device, 0)
        value.update_inplace(np.zeros(shape, dtype=np.uint16 if onnx_type == "bfloat16" else dtype))
        return cls(value, None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    def rows(self, start: int, stop: int) -> Buffer | None:
        """Rows ``start .. stop - 1`` as a buffer over the same memory (their rows of a C-ordered
        array are contiguous), or None for device memory."""
        if self.array is None:
            return None
        view = self.array[start:stop]
        value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            _raw(view), self.value.element_type()
        )
        return Buffer(value, view)

    def host(self) -> np.ndarray:
        """The buffer's contents: the array itself on the CPU, a copy from the device."""
        return self.array if self.array is not None else self.value.numpy()

    def load(self, array: np.ndarray) -> None:
        """Overwrite the whole buffer with ``array`` (same shape and type)."""
        if self.array is not None:
            if array is not self.array:
                self.array[...] = array
        else:
            self.value.update_inplace(_raw(np.ascontiguousarray(array)))


@dataclass(frozen=True)
class Tensor:
    """What the artifact's manifest says of a graph input: ONNX element type and shape."""

    dtype: str
    shape: tuple[int | str, ...]


class Graph:
    """One ONNX graph in a session on ``device``; thread-safe (``run`` keeps no state)."""

    def __init__(self, path: Path, device: str, options: ort.SessionOptions) -> None:
        providers = [CUDA, CPU] if device == "cuda" else [CPU]
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        if device == "cuda" and self.providers[0] != CUDA:
            raise DeviceError(
                f"{path}: the session fell back to {self.providers[0]} although CUDA was "
                "usable for a probe graph; use device='cpu'"
            )
        self.device = device
        # Where IOBinding keeps the cache; None: plain session.run with numpy arrays.
        self.bind: str | None = "cuda" if device == "cuda" else None
        # ONNX Runtime refusing an input: ArtifactError (a loaded artifact), or its own error.
        self.translate_errors = True
        self._describe()

    def _describe(self) -> None:
        self.inputs = {
            value.name: Tensor(value.type[len("tensor(") : -1], tuple(value.shape))
            for value in self.session.get_inputs()
        }
        self.outputs = [value.name for value in self.session.get_outputs()]
        self.output_info = {
            value.name: Tensor(value.type[len("tensor(") : -1], tuple(value.shape))
            for value in self.session.get_outputs()
        }

    @classmethod
    def adopt(cls, session: ort.InferenceSession, path: Path) -> Graph:
        """A Graph around a session its caller opened with its own options (``llmspec
        verify``, the export gate): plain ``session.run`` with numpy arrays on whatever
        provider it uses, and ONNX Runtime's own exceptions, as when the caller ran it."""
        graph = cls.__new__(cls)
        graph.path = Path(path)
        graph.session = session
        graph.providers = session.get_providers()
        graph.device = "cuda" if graph.providers[0] == CUDA else "cpu"
        graph.bind = None
        graph.translate_errors = False
        graph._describe()
        return graph

    def buffer(self, name: str, shape: tuple[int, ...], dtype: Any = None) -> Buffer:
        """A zero-filled in-place :class:`Buffer` for cache input ``name`` where this graph's
        cache lives; ``dtype`` overrides the numpy type (bfloat16 from ml_dtypes)."""
        onnx_type = self.inputs[name].dtype
        if dtype is None:
            dtype = NUMPY_DTYPES.get(onnx_type)
        if dtype is None and onnx_type == "bfloat16":
            try:
                import ml_dtypes  # numpy's bfloat16, where onnx brought it
            except ImportError:
                pass
            else:
                dtype = ml_dtypes.bfloat16
        if dtype is None or onnx_type not in _ONNX_TYPES:
            raise DeviceError(
                f"{self.path}: input {name} is {onnx_type}, which this runtime cannot feed "
                "from numpy"
            )
        return Buffer.zeros(shape, onnx_type, dtype, self.bind or "cpu")

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        cache: Mapping[str, Any],
        host: tuple[str, ...],
        buffers: Mapping[str, tuple[str, Buffer]] | None = None,
        into: Mapping[str, np.ndarray] | None = None,
        bindings: dict[int, Any] | None = None,
    ) -> dict[str, Any]:
        """Run once. ``inputs`` are host arrays; ``cache`` are values from an earlier run (numpy
        on the CPU, ``OrtValue`` on CUDA) or :meth:`empty` ones. Returns every output by name:
        those named in ``host`` as numpy arrays, the rest where the cache lives.

        The runtime checks every request before it runs (token ids, lengths, the cache's shape
        from the manifest), so ONNX Runtime refusing an input means the graph disagrees with
        the manifest (a context_length beyond the graph's position table, say): that raises
        :class:`ArtifactError` naming the graph, not ONNX Runtime's own exception.

        ``buffers`` maps cache inputs to (output, :class:`Buffer`): each buffer is bound as the
        input and as the output, so the graph updates it in place (the output is not returned).
        ``into``: host arrays the outputs of those names are written to (returned as they are);
        ``bindings``: where the caller keeps this graph's IOBinding of ``buffers`` between runs
        (a cache's), so that a step binds only its small inputs and ``into``. Both together
        skip ONNX Runtime's per-run wrapping of every output, a fifth of the Python of a step.
        """
        if not self.translate_errors:
            return self._run(inputs, cache, host, buffers or {}, into, bindings)
        try:
            return self._run(inputs, cache, host, buffers or {}, into, bindings)
        except InvalidArgument as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid argument"
            raise ArtifactError(
                f"{self.path}: ONNX Runtime refused the graph's inputs ({first}); the graph "
                "disagrees with its manifest, check the artifact with llmspec verify"
            ) from None

    def _run(
        self,
        inputs: Mapping[str, np.ndarray],
        cache: Mapping[str, Any],
        host: tuple[str, ...],
        buffers: Mapping[str, tuple[str, Buffer]],
        into: Mapping[str, np.ndarray] | None = None,
        bindings: dict[int, Any] | None = None,
    ) -> dict[str, Any]:
        if self.bind is None and not buffers:
            values = self.session.run(self.outputs, {**inputs, **cache})
            return dict(zip(self.outputs, values, strict=True))
        in_place = {output for output, _ in buffers.values()}
        returned = [name for name in self.outputs if name not in in_place]
        if into is not None and bindings is not None and all(n in into for n in returned):
            return self._run_kept(inputs, cache, buffers, into, bindings)
        binding = self.session.io_binding()
        _bind_inputs(binding, inputs, cache)
        by_output = {}
        for name, (output, buffer) in buffers.items():
            binding.bind_ortvalue_input(name, buffer.value)
            by_output[output] = buffer
        for name in self.outputs:  # in order: get_outputs() lists them as bound
            if name in by_output:
                binding.bind_ortvalue_output(name, by_output[name].value)
            else:
                binding.bind_output(name, "cpu" if name in host or not self.bind else self.bind)
        self._run_binding(binding)
        values = dict(zip(self.outputs, binding.get_outputs(), strict=True))
        return {
            name: values[name].numpy() if name in host or self.bind is None else values[name]
            for name in returned
        }

    def _run_kept(
        self,
        inputs: Mapping[str, np.ndarray],
        cache: Mapping[str, Any],
        buffers: Mapping[str, tuple[str, Buffer]],
        into: Mapping[str, np.ndarray],
        bindings: dict[int, Any],
    ) -> dict[str, Any]:
        """:meth:`run` on the IOBinding kept in ``bindings`` (its buffers bound once), the
        outputs written to ``into``."""
        binding = bindings.get(id(self))
        if binding is None:
            binding = bindings[id(self)] = self.session.io_binding()
            for name, (output, buffer) in buffers.items():
                binding.bind_ortvalue_input(name, buffer.value)
                binding.bind_ortvalue_output(output, buffer.value)
        _bind_inputs(binding, inputs, cache)
        for name, array in into.items():
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
        self._run_binding(binding)
        return dict(into)

    def _run_binding(self, binding: Any) -> None:
        try:
            self.session.run_with_iobinding(binding)
        except RuntimeError as err:
            # IOBinding reports refused inputs as a bare RuntimeError; session.run as
            # InvalidArgument, which callers (and the translation in run) know
            if any(why in str(err) for why in _REFUSED_INPUT):
                raise InvalidArgument(str(err)) from None
            raise

    def to_host(self, value: Any) -> np.ndarray:
        """A cache value (from :meth:`run` or :meth:`empty`) as a numpy array (a copy from the
        device under IOBinding)."""
        return value if isinstance(value, np.ndarray) else value.numpy()

    def to_device(self, array: np.ndarray) -> Any:
        """A host array placed where this graph's cache lives (itself on the CPU)."""
        array = np.ascontiguousarray(array)
        if self.bind is None:
            return array
        return ort.OrtValue.ortvalue_from_numpy(array, self.bind, 0)

    def reorder(self, value: Any, rows: np.ndarray) -> Any:
        """A cache value (from :meth:`run` or :meth:`empty`) with its batch rows taken in the
        order ``rows`` (beam search; repeating prompts for beams).

        With IOBinding this is a round trip through the host: ONNX Runtime's Python API has no
        device-side gather, and the runtime does not import torch or cupy."""
        if isinstance(value, np.ndarray):
            return np.ascontiguousarray(np.take(value, rows, axis=0))
        host = np.ascontiguousarray(np.take(value.numpy(), rows, axis=0))
        return ort.OrtValue.ortvalue_from_numpy(host, self.bind or "cpu", 0)
