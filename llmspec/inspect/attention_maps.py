"""``llmspec attention``: the attention weights of a model on a text, drawn as heat maps.

The weights are the ones the generated model code computes, not a second implementation of
attention: the model runs its normal forward (under ``torch.no_grad()``, in eval mode) while

* forward pre/post hooks on every ``{encoder,decoder}.layers.{i}.{self_attn,cross_attn}`` module
  note which attention is running, and
* the generated module's global ``masked_softmax(scores, mask)`` (through which every attention
  of every family computes its probabilities) is replaced, for the duration of the call only, by
  a wrapper that calls the original and records its output (and the mask) for the current
  attention module. The original is restored in a ``finally``, even when the forward raises.

The model's outputs are unchanged: the wrapper returns exactly what the original returns.

Recorded weights are ``[heads, T, S]`` per ``(stack, layer, kind)``: T queries (rows), S keys
(columns). Masked cells (keys a query may not see: later positions in causal self-attention,
padding keys) are exactly 0, except in a padding query's row whose keys are all masked, where
the model's softmax is uniform (its output is never used); :func:`attention_maps` also returns
the masks, which the drawing marks.

Inputs follow the runtime's conventions (:mod:`runtime.model`): a decoder-only text is its
tokens as they are; encoder inputs are framed ``[bos] tokens [eos]`` where the vocabulary has
them; an encoder-decoder's decoder input is ``decoder_start`` followed by ``--target``'s tokens.
"""

from __future__ import annotations

import io
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmspec.errors import LlmspecError
from llmspec.sources import resolve_source

Key = tuple[str, int, str]  # (stack, layer, kind): ("decoder", 0, "self")

STACKS = ("encoder", "decoder")
KINDS = ("self", "cross")
_ATTENTION_NAMES = {"self_attn": "self", "cross_attn": "cross"}
_LOCK = threading.Lock()  # one instrumented forward per generated module at a time


@dataclass(frozen=True)
class AttentionMap:
    """One attention module's weights on one input (batch row 0)."""

    weights: np.ndarray  # [heads, T, S] float32, the output of masked_softmax
    allowed: np.ndarray  # [heads, T, S] bool, the mask: True where a query may see a key
    scores: np.ndarray  # [heads, T, S] float32, the scores given to masked_softmax


def attention_modules(model: Any) -> dict[Key, Any]:
    """Every attention module of ``model`` by (stack, layer, kind), in forward order."""
    found: dict[Key, Any] = {}
    for name, sub in model.named_modules():
        parts = name.split(".")
        if (
            len(parts) == 4
            and parts[0] in STACKS
            and parts[1] == "layers"
            and parts[2].isdigit()
            and parts[3] in _ATTENTION_NAMES
        ):
            found[(parts[0], int(parts[2]), _ATTENTION_NAMES[parts[3]])] = sub
    return found


@contextmanager
def recording(module: types.ModuleType, model: Any) -> Iterator[dict[Key, AttentionMap]]:
    """Record every attention of the forward calls made inside the block::

        with recording(load_module(spec), model) as maps:
            model(input_ids)

    ``maps`` fills with one :class:`AttentionMap` per attention module (the last call of each
    wins). ``module.masked_softmax`` and the hooks are restored on exit, whatever happens."""
    original = getattr(module, "masked_softmax", None)
    if original is None:
        raise ValueError(f"{module.__name__} has no masked_softmax; not a generated model module")
    modules = attention_modules(model)
    if not modules:
        raise ValueError("the model has no {encoder,decoder}.layers.{i}.{self,cross}_attn modules")
    maps: dict[Key, AttentionMap] = {}
    current: list[Key] = []

    def wrapper(scores: Any, mask: Any) -> Any:
        probs = original(scores, mask)
        if current:
            allowed = mask.expand_as(probs)
            maps[current[-1]] = AttentionMap(
                weights=probs[0].detach().float().cpu().numpy(),
                allowed=allowed[0].detach().cpu().numpy().astype(bool),
                scores=scores[0].detach().float().cpu().numpy(),
            )
        return probs

    def enter(key: Key) -> Callable[..., None]:
        def hook(_module: Any, _args: Any) -> None:
            current.append(key)

        return hook

    def leave(_module: Any, _args: Any, _output: Any) -> None:
        current.pop()

    with _LOCK:
        handles = []
        try:
            for key, sub in modules.items():
                handles.append(sub.register_forward_pre_hook(enter(key)))
                handles.append(sub.register_forward_hook(leave))
            setattr(module, "masked_softmax", wrapper)  # noqa: B010
            yield maps
        finally:
            setattr(module, "masked_softmax", original)  # noqa: B010
            for handle in handles:
                handle.remove()


def attention_maps(
    module: types.ModuleType,
    model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    decoder_input_ids: Any = None,
    decoder_attention_mask: Any = None,
) -> dict[Key, AttentionMap]:
    """Run the model's forward once in eval mode under ``torch.no_grad()`` and return every
    attention's weights, masks and scores (batch row 0). ``decoder_input_ids`` is required for
    an encoder-decoder model (``forward(input_ids, attention_mask, decoder_input_ids, ...)``)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recording(module, model) as maps:
            if decoder_input_ids is None:
                model(input_ids, attention_mask)
            else:
                model(
                    input_ids,
                    attention_mask,
                    decoder_input_ids,
                    decoder_attention_mask=decoder_attention_mask,
                )
    finally:
        model.train(was_training)
    return dict(sorted(maps.items(), key=lambda item: (STACKS.index(item[0][0]), item[0][1:])))


def attention_weights(
    module: types.ModuleType,
    model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    decoder_input_ids: Any = None,
    decoder_attention_mask: Any = None,
) -> dict[Key, np.ndarray]:
    """The attention probabilities ``[heads, T, S]`` of every attention module by
    ``(stack, layer, kind)``, as :func:`attention_maps` records them."""
    maps = attention_maps(
        module, model, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask
    )
    return {key: value.weights for key, value in maps.items()}


# --- drawing ---------------------------------------------------------------------------------

_VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u2192", "\r": "\u240d"}


def token_label(text: str, width: int = 10) -> str:
    """A short axis label for one decoded token, its whitespace made visible."""
    shown = "".join(_VISIBLE.get(ch, ch) for ch in text) or "\u2205"
    return shown if len(shown) <= width else shown[: width - 1] + "\u2026"


def describe(architecture: str, stack: str, kind: str) -> str:
    if kind == "cross":
        return "cross-attention (decoder queries, encoder keys)"
    if stack == "encoder":
        return "bidirectional encoder self-attention"
    return "causal decoder self-attention"


@dataclass(frozen=True)
class Panel:
    layer: int
    head: int
    weights: np.ndarray  # [T, S]
    allowed: np.ndarray  # [T, S]


def draw(
    panels: list[Panel],
    query_labels: list[str],
    key_labels: list[str],
    title: str,
    columns: int,
) -> bytes:
    """The PNG bytes of a grid of heat maps (rows = queries, columns = keys); masked cells are
    grey and hatched, with a legend entry "masked"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    rows = -(-len(panels) // columns)
    T, S = len(query_labels), len(key_labels)
    cell = 0.28
    panel_w = max(2.6, S * cell + 1.0)
    panel_h = max(1.6, T * cell + 1.0)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(columns * panel_w + 1.2, rows * panel_h + 1.2),
        squeeze=False,
        layout="constrained",
    )
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#c8c8c8")
    image = None
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.axis("off")
            continue
        panel = panels[index]
        shown = np.ma.masked_array(panel.weights, mask=~panel.allowed)
        image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        masked = [
            Rectangle((j - 0.5, i - 0.5), 1, 1)
            for i, j in zip(*np.nonzero(~panel.allowed), strict=True)
        ]
        if masked:
            ax.add_collection(
                PatchCollection(
                    masked, facecolor="none", edgecolor="#7a7a7a", hatch="///", linewidth=0
                )
            )
        ax.set_title(f"layer {panel.layer}, head {panel.head}", fontsize=9)
        row, column = divmod(index, columns)
        ax.set_xticks(range(S))
        ax.set_yticks(range(T))
        last_row = row == rows - 1 or index + columns >= len(panels)
        ax.set_xticklabels(key_labels if last_row else [], rotation=90, fontsize=7)
        ax.set_yticklabels(query_labels if column == 0 else [], fontsize=7)
        if last_row:
            ax.set_xlabel("key", fontsize=8)
        if column == 0:
            ax.set_ylabel("query", fontsize=8)
    assert image is not None
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    legend = Patch(facecolor="#c8c8c8", edgecolor="#7a7a7a", hatch="///", label="masked")
    fig.legend(handles=[legend], loc="outside lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# --- a map from a request (``llmspec attention``'s arguments) --------------------------------


class AttentionInputError(ValueError, LlmspecError):
    """A bad request: a text too long or empty, a layer or head out of range, ..."""


def _load(source: str) -> tuple[Any, Any, Any, Any]:
    """(spec, generated module, model in fp32 eval mode, tokenizer) of a spec file, a
    model/run directory or an artifact (both hold spec.yaml, weights.safetensors and usually
    tokenizer.json). A spec file gets the export's seeded initial weights."""
    import torch

    from llmspec.builder import INIT_SEED, build, load_module

    src = resolve_source(source)
    torch.manual_seed(INIT_SEED)
    model = build(src.spec, dtype="fp32", weights=src.weights).eval()
    return src.spec, load_module(src.spec), model, src.tokenizer()


def _select(spec: Any, stack: str | None, kind: str | None) -> tuple[str, str]:
    arch = spec.architecture
    if kind == "cross" or (arch == "encoder-decoder" and stack is None and kind is None):
        if arch != "encoder-decoder":
            raise AttentionInputError(f"{spec.name} is {arch}: it has no cross-attention")
        if stack == "encoder":
            raise AttentionInputError("cross-attention is in the decoder, not the encoder")
        return "decoder", "cross"
    if stack is None:
        stack = "decoder" if arch == "decoder-only" else "encoder"
    has = {"encoder-only": ("encoder",), "decoder-only": ("decoder",)}.get(arch, STACKS)
    if stack not in has:
        raise AttentionInputError(f"{spec.name} is {arch}: it has no {stack} stack")
    return stack, "self"


def _check_range(what: str, value: int | None, count: int, where: str) -> None:
    if value is not None and not 0 <= value < count:
        raise AttentionInputError(
            f"--{what} {value} is out of range: {where} has {count} {what}s (0-{count - 1})"
        )


def render_command(args: Any) -> tuple[bytes, str]:
    """(PNG bytes, a one-line summary) for parsed ``llmspec attention`` arguments."""
    import torch

    spec, module, model, tokenizer = _load(args.source)
    stack, kind = _select(spec, args.stack, args.kind)
    layers = spec.num_decoder_layers if stack == "decoder" else spec.encoder_layers
    heads = spec.attention.heads
    _check_range("layer", args.layer, layers, f"the {stack} of {spec.name}")
    _check_range("head", args.head, heads, f"each layer of {spec.name}")

    from llmspec.tokenizer import check_fits

    special = check_fits(tokenizer, spec)
    text_ids = list(tokenizer.encode(args.text, add_special_tokens=False).ids)
    if not text_ids:
        raise AttentionInputError("--text is empty: nothing to attend over")
    if spec.architecture == "decoder-only":
        input_ids = text_ids
    else:
        framed = [special[n] for n in ("bos",) if n in special]
        input_ids = [*framed, *text_ids, *([special["eos"]] if "eos" in special else [])]
    decoder_ids = None
    if spec.architecture == "encoder-decoder":
        target = list(tokenizer.encode(args.target, add_special_tokens=False).ids)
        decoder_ids = [special[spec.decoder_start], *target]
    limit = spec.context_length
    for name, ids in (("--text", input_ids), ("--target", decoder_ids or [])):
        if len(ids) > limit:
            raise AttentionInputError(
                f"{name} is {len(ids)} tokens; {spec.name}'s context length is {limit}"
            )
    maps = attention_maps(
        module,
        model,
        torch.tensor([input_ids]),
        None,
        None if decoder_ids is None else torch.tensor([decoder_ids]),
    )

    def labels(ids: list[int]) -> list[str]:
        return [token_label(tokenizer.decode([i], skip_special_tokens=False)) for i in ids]

    encoder_labels = labels(input_ids)
    decoder_labels = labels(decoder_ids) if decoder_ids is not None else encoder_labels
    if spec.architecture == "encoder-only":
        decoder_labels = encoder_labels
    queries = encoder_labels if stack == "encoder" else decoder_labels
    keys = encoder_labels if stack == "encoder" or kind == "cross" else decoder_labels

    chosen_layers = range(layers) if args.layer is None else [args.layer]
    chosen_heads = range(heads) if args.head is None else [args.head]
    panels = [
        Panel(
            layer,
            head,
            maps[(stack, layer, kind)].weights[head],
            maps[(stack, layer, kind)].allowed[head],
        )
        for layer in chosen_layers
        for head in chosen_heads
    ]
    columns = len(chosen_heads) if args.head is None else min(len(chosen_layers), 4)
    what = describe(spec.architecture, stack, kind)
    title = f"{spec.name} ({spec.architecture}): {what}"
    if args.layer is not None and args.head is not None:
        title += f", layer {args.layer}, head {args.head}"
    png = draw(panels, queries, keys, title, columns)
    return png, f"{what}, {len(panels)} map(s), {len(queries)}x{len(keys)} tokens"


__all__ = [
    "AttentionMap",
    "attention_maps",
    "attention_modules",
    "attention_weights",
    "draw",
    "recording",
    "token_label",
]
