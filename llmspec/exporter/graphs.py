"""Turning a built model into ONNX graphs with the artifact's contracts (see runtime.artifact).

Each family's model is wrapped in a small module whose ``forward`` takes and returns flat
tensors in the contract's order, then exported with ``torch.onnx.export(..., dynamo=True)`` at
opset 18 with dynamic batch, sequence and cache lengths. Names of inputs and outputs come from
:mod:`runtime.artifact`, the one definition of the format.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from llmspec.errors import LlmspecError
from llmspec.spec.sections import ModelSpec
from runtime import artifact as fmt
from runtime.artifact import GraphInfo, TensorInfo

OPSET = 18

# Example sizes for tracing: distinct and above 1 so that torch.export neither specializes a
# dimension to a constant nor equates two of them.
_BATCH, _SEQ, _PAST, _SOURCE = 2, 3, 5, 7


class ExportError(RuntimeError, LlmspecError):
    """The model could not be turned into a graph; the message says which and why."""


@dataclass
class GraphPlan:
    """One graph to export: the wrapper module, example inputs and the contract's names."""

    file: str
    module: nn.Module
    args: tuple[Any, ...]
    dynamic_shapes: dict[str, Any]
    input_names: list[str]
    output_names: list[str]
    dim_names: dict[str, list[str | None]] = field(default_factory=dict)


class _DecoderOnly(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        past_key_values: list[Tensor],
    ) -> tuple[Tensor, ...]:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values)
        return (out.logits, *out.present)


class _EncoderOnly(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        out = self.model(input_ids, attention_mask)
        return (out.last_hidden_state, out.logits)


class _EncoderOnlyWithTypes(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> tuple[Tensor, ...]:
        out = self.model(input_ids, attention_mask, token_type_ids)
        return (out.last_hidden_state, out.logits)


class _Seq2SeqEncoder(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        out = self.model.encode(input_ids, attention_mask)
        return (out.last_hidden_state, *out.cross_key_values)


class _Seq2SeqDecoder(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        encoder_attention_mask: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cross_key_values: list[Tensor],
        past_key_values: list[Tensor],
    ) -> tuple[Tensor, ...]:
        out = self.model.decode(
            input_ids,
            encoder_attention_mask,
            cross_key_values,
            attention_mask,
            position_ids,
            past_key_values,
        )
        return (out.logits, *out.present)


class _Seq2SeqDecoderNoPositions(nn.Module):
    """For relative (T5) and ALiBi positions, which depend on distances, not position ids."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        encoder_attention_mask: Tensor,
        attention_mask: Tensor,
        cross_key_values: list[Tensor],
        past_key_values: list[Tensor],
    ) -> tuple[Tensor, ...]:
        out = self.model.decode(
            input_ids,
            encoder_attention_mask,
            cross_key_values,
            attention_mask,
            None,
            past_key_values,
        )
        return (out.logits, *out.present)


def _ids(shape: tuple[int, ...], vocab: int) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, shape, generator=generator)


def _cache(count: int, heads: int, length: int, head_dim: int, dtype: torch.dtype) -> list[Tensor]:
    return [torch.zeros(_BATCH, heads, length, head_dim, dtype=dtype) for _ in range(count)]


def _kv_names(prefix: str, layers: int, stack: str | None) -> list[str]:
    name = fmt.past_name if prefix == "past" else fmt.present_name
    return [name(i, kind, stack) for i in range(layers) for kind in ("key", "value")]


def plan_graphs(spec: ModelSpec, model: nn.Module, dtype: torch.dtype) -> list[GraphPlan]:
    """The graphs of ``spec``'s family, with example inputs in ``dtype``."""
    Dim = torch.export.Dim
    batch, seq = Dim("batch"), Dim("sequence")
    past, source = Dim("past_sequence", min=0), Dim("encoder_sequence")
    vocab = spec.vocabulary.size
    kv, hd = spec.kv_heads, spec.head_dim
    ids = {0: batch, 1: seq}
    if spec.architecture == "decoder-only":
        layers = spec.num_decoder_layers
        mask = torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.long)
        positions = torch.arange(_PAST, _PAST + _SEQ).expand(_BATCH, _SEQ)
        return [
            GraphPlan(
                file=fmt.DECODER_GRAPH,
                module=_DecoderOnly(model),
                args=(
                    _ids((_BATCH, _SEQ), vocab),
                    mask,
                    positions,
                    _cache(2 * layers, kv, _PAST, hd, dtype),
                ),
                dynamic_shapes={
                    "input_ids": ids,
                    "attention_mask": {0: batch, 1: Dim.AUTO},
                    "position_ids": ids,
                    "past_key_values": [{0: batch, 2: past}] * (2 * layers),
                },
                input_names=[
                    fmt.INPUT_IDS,
                    fmt.ATTENTION_MASK,
                    fmt.POSITION_IDS,
                    *_kv_names("past", layers, None),
                ],
                output_names=[fmt.LOGITS, *_kv_names("present", layers, None)],
                dim_names={fmt.ATTENTION_MASK: ["batch", "total_sequence"]},
            )
        ]
    if spec.architecture == "encoder-only":
        mask = torch.ones(_BATCH, _SEQ, dtype=torch.long)
        args: tuple[Any, ...] = (_ids((_BATCH, _SEQ), vocab), mask)
        shapes: dict[str, Any] = {"input_ids": ids, "attention_mask": ids}
        names = [fmt.INPUT_IDS, fmt.ATTENTION_MASK]
        wrapper: nn.Module = _EncoderOnly(model)
        if spec.embeddings.token_types:
            args = (*args, torch.zeros(_BATCH, _SEQ, dtype=torch.long))
            shapes["token_type_ids"] = ids
            names.append(fmt.TOKEN_TYPE_IDS)
            wrapper = _EncoderOnlyWithTypes(model)
        return [
            GraphPlan(
                file=fmt.ENCODER_GRAPH,
                module=wrapper,
                args=args,
                dynamic_shapes=shapes,
                input_names=names,
                output_names=[fmt.LAST_HIDDEN_STATE, fmt.LOGITS],
            )
        ]
    layers = spec.num_decoder_layers
    heads = spec.kv_heads  # self- and cross-attention caches both hold the key/value heads
    encoder = GraphPlan(
        file=fmt.ENCODER_GRAPH,
        module=_Seq2SeqEncoder(model),
        args=(_ids((_BATCH, _SOURCE), vocab), torch.ones(_BATCH, _SOURCE, dtype=torch.long)),
        dynamic_shapes={
            "input_ids": {0: batch, 1: source},
            "attention_mask": {0: batch, 1: source},
        },
        input_names=[fmt.INPUT_IDS, fmt.ATTENTION_MASK],
        output_names=[fmt.LAST_HIDDEN_STATE, *_kv_names("present", layers, "encoder")],
    )
    cross = [torch.zeros(_BATCH, heads, _SOURCE, hd, dtype=dtype) for _ in range(2 * layers)]
    uses_positions = spec.positions.type in ("learned", "sinusoidal", "rope")
    args = (
        _ids((_BATCH, _SEQ), vocab),
        torch.ones(_BATCH, _SOURCE, dtype=torch.long),
        torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.long),
    )
    shapes = {
        "input_ids": ids,
        "encoder_attention_mask": {0: batch, 1: source},
        "attention_mask": {0: batch, 1: Dim.AUTO},
    }
    names = [fmt.INPUT_IDS, fmt.ENCODER_ATTENTION_MASK, fmt.ATTENTION_MASK]
    if uses_positions:
        args = (*args, torch.arange(_PAST, _PAST + _SEQ).expand(_BATCH, _SEQ))
        shapes["position_ids"] = ids
        names.append(fmt.POSITION_IDS)
    args = (*args, cross, _cache(2 * layers, heads, _PAST, hd, dtype))
    shapes["cross_key_values"] = [{0: batch, 2: source}] * (2 * layers)
    shapes["past_key_values"] = [{0: batch, 2: past}] * (2 * layers)
    decoder = GraphPlan(
        file=fmt.DECODER_GRAPH,
        module=(_Seq2SeqDecoder if uses_positions else _Seq2SeqDecoderNoPositions)(model),
        args=args,
        dynamic_shapes=shapes,
        input_names=names
        + _kv_names("past", layers, "encoder")
        + _kv_names("past", layers, "decoder"),
        output_names=[fmt.LOGITS, *_kv_names("present", layers, "decoder")],
        dim_names={fmt.ATTENTION_MASK: ["batch", "total_sequence"]},
    )
    return [encoder, decoder]


@contextlib.contextmanager
def quiet() -> Any:
    """torch.onnx and ONNX Runtime's quantizers report each stage and warn about things that do
    not concern our users (missing torchvision, deprecations); keep the user's terminal for our
    own progress. Warnings and log records below ERROR are dropped while exporting."""
    sink = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sink):
                yield
    finally:
        logging.disable(logging.NOTSET)


def export_graph(plan: GraphPlan, directory: Path) -> Path:
    """Export one graph into ``directory`` (weights in ``<file>.data``); return its path."""
    path = directory / plan.file
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(
                plan.module.eval(),
                plan.args,
                str(path),
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=plan.dynamic_shapes,
                input_names=plan.input_names,
                output_names=plan.output_names,
                external_data=True,
                verbose=False,
            )
    except OSError:
        raise  # writing the graph failed (a full disk): the caller names the output
    except Exception as err:  # the exporter raises many types; name the graph and the cause
        raise ExportError(f"exporting {plan.file} failed: {type(err).__name__}: {err}") from err
    _rename_dims(path, plan)
    return path


def _rename_dims(path: Path, plan: GraphPlan) -> None:
    """Give automatically named dimensions the contract's names (cosmetic, for people and
    Netron), and check that the graph has exactly the planned inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != plan.input_names or outputs != plan.output_names:
        raise ExportError(
            f"{plan.file}: the exporter produced inputs {inputs} and outputs {outputs}, "
            f"expected {plan.input_names} and {plan.output_names}"
        )
    changed = False
    for value in model.graph.input:
        names = plan.dim_names.get(value.name)
        if not names:
            continue
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            if name and dim.dim_param != name:
                dim.dim_param = name
                changed = True
    if changed:
        onnx.save(model, str(path))  # external data stays where it is: only the graph changed


_ELEMENT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


def graph_info(path: Path) -> GraphInfo:
    """The inputs and outputs of a graph file (names, element types, symbolic shapes)."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> list[TensorInfo]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape: list[int | str] = [
                d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim
            ]
            out.append(TensorInfo(value.name, _ELEMENT_TYPES.get(tensor.elem_type, "?"), shape))
        return out

    return GraphInfo(inputs=describe(model.graph.input), outputs=describe(model.graph.output))
