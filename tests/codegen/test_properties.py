"""Properties of generated models over random small specs and inputs (hypothesis).

Causality, bidirectionality, padding invariance and cache equivalence are what export,
batching and generation rely on; they must hold for every position type, norm, attention
layout and family.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from codegen_variants import PAD, POSITIONS, VOCAB, built, tokens, variant
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspec.builder import load_module
from llmspec.spec.sections import ModelSpec

# Each example generates, imports and runs a model: a fifth of the profile's examples (see
# tests/conftest.py; 10 under "ci", 20 under "dev"), the profile's other settings unchanged.
EXAMPLES = settings(max_examples=max(4, settings().max_examples // 5), deadline=None)
ATOL, RTOL = 1e-5, 1e-4


@st.composite
def specs(draw: st.DrawFn, family: str) -> ModelSpec:
    """A random tiny spec of ``family``: any positions, norm, activation, head layout, bias and
    output head the schema allows."""
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    head_size = draw(st.sampled_from([4, 8]))
    kv_heads = draw(st.sampled_from([d for d in (1, 2, 3, 4) if heads % d == 0]))
    norm_type = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    tied = draw(st.booleans())
    scaled = draw(st.booleans())
    layers = draw(st.integers(1, 2))
    changes: dict[str, Any] = {
        "d_model": heads * head_size,
        "layers": layers,
        "attention": {
            "heads": heads,
            "kv_heads": kv_heads,
            "scaled": scaled,
            **draw(attention_knobs(family, scaled, norm_type, layers)),
        },
        "positions": POSITIONS[draw(st.sampled_from(sorted(POSITIONS)))],
        "norm": {"type": norm_type, "position": draw(st.sampled_from(["pre", "post"]))},
        "feed_forward": {
            "d_ff": 24,
            "activation": draw(
                st.sampled_from(["relu", "gelu", "gelu-tanh", "silu", "swiglu", "geglu"])
            ),
        },
        "bias": draw(st.booleans()),
        "embeddings": {"scale": draw(st.booleans()), "norm": draw(st.booleans())},
        "head": {
            "tied": tied,
            "rescale": tied and draw(st.booleans()),
            "logits_bias": draw(st.sampled_from(["none", "learned", "buffer"])),
        },
    }
    if changes["positions"]["type"] == "rope":
        changes["positions"] = {
            **changes["positions"],
            **draw(rope_knobs(head_size, layers, changes["attention"])),
        }
    if family == "encoder-only":
        changes["embeddings"]["token_types"] = draw(st.sampled_from([0, 2]))
        changes["head"]["transform"] = draw(st.booleans())
    if family == "encoder-decoder":
        changes["decoder_layers"] = draw(st.integers(1, 2))
    knobs = draw(block_knobs(family, changes["norm"]))
    changes["norm"].update(knobs["norm"])
    changes["head"].update(knobs["head"])
    changes["block"] = knobs["block"]
    return variant(family, **changes)


@st.composite
def block_knobs(draw: st.DrawFn, family: str, norm: dict[str, Any]) -> dict[str, Any]:
    """The norm, block and head knobs (each off or on) that fit the rest of the spec: the
    (1 + weight) RMSNorm, LayerNorm shifts apart from biases, sandwich norms or a parallel
    block (pre-norm; parallel not in encoder-decoders), a final logit soft-cap."""
    knobs: dict[str, Any] = {"norm": {}, "head": {}, "block": {}}
    if norm["type"] == "rmsnorm":
        knobs["norm"]["unit_offset"] = draw(st.booleans())
    else:
        knobs["norm"]["bias"] = draw(st.sampled_from([None, True, False]))
    if norm["position"] == "pre":
        wiring = ["sequential", "sandwich", "shared-norm", "separate-norms"]
        choice = draw(st.sampled_from(wiring[: 2 if family == "encoder-decoder" else 4]))
        if choice == "sandwich":
            knobs["norm"]["sandwich"] = True
        elif choice != "sequential":
            knobs["block"]["parallel"] = choice
    if draw(st.booleans()):
        knobs["head"]["softcap"] = draw(st.sampled_from([1.0, 30.0]))
    return knobs


@st.composite
def attention_knobs(
    draw: st.DrawFn, family: str, scaled: bool, norm_type: str, layers: int
) -> dict[str, Any]:
    """The attention section's knobs (each off or on) that fit the rest of the spec: a sliding
    window and its layer pattern in decoders, QK-norm with RMSNorm, a scale when scaled."""
    knobs: dict[str, Any] = {}
    if draw(st.booleans()):
        knobs["softcap"] = draw(st.sampled_from([1.0, 30.0]))
    if scaled and draw(st.booleans()):
        knobs["scale"] = draw(st.sampled_from([0.1, 0.5]))
    if norm_type == "rmsnorm" and draw(st.booleans()):
        knobs["qk_norm"] = "rmsnorm"
    knobs["qkv_bias"] = draw(st.sampled_from([None, True, False]))
    if family == "decoder-only" and draw(st.booleans()):
        knobs["sliding_window"] = draw(st.integers(1, 4))
        patterns = [None, ["local", "global"], ["global", "local"]]
        knobs["layer_pattern"] = draw(st.sampled_from(patterns[: 3 if layers > 1 else 1]))
    return knobs


@st.composite
def rope_knobs(
    draw: st.DrawFn, head_size: int, layers: int, attention: dict[str, Any]
) -> dict[str, Any]:
    """Rope's knobs (each off or on): partial rotary, a scaling (dynamic and longrope with an
    original length beyond the context, so that every length of a test stays on one side of
    it: their frequencies follow the total length, as transformers'), and a local base when
    some layers are local and some global."""
    knobs: dict[str, Any] = {}
    rotated = head_size
    if draw(st.booleans()):
        knobs["partial"] = 0.5
        rotated = head_size // 2
    pairs = rotated // 2
    scalings = [
        None,
        {"type": "linear", "factor": 4.0},
        {"type": "dynamic", "factor": 2.0, "original_max_positions": 64},
        {
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_positions": 8,
        },
        {"type": "yarn", "factor": 4.0, "original_max_positions": 8},
        {
            "type": "longrope",
            "short_factor": [1.5] * pairs,
            "long_factor": [3.0] * pairs,
            "original_max_positions": 64,
            "factor": 4.0,
        },
    ]
    scaling = draw(st.sampled_from(scalings))
    if scaling is not None:
        knobs["scaling"] = scaling
    pattern = attention.get("layer_pattern")
    mixed = attention.get("sliding_window") and pattern and len(pattern) == layers == 2
    if mixed and draw(st.booleans()):
        knobs["local_base"] = 100.0
    return knobs


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Decoder-only


@EXAMPLES
@given(spec=specs("decoder-only"), length=st.integers(2, 8), data=st.data())
def test_decoder_output_at_i_ignores_later_tokens(spec: ModelSpec, length: int, data: Any) -> None:
    model = built(spec)
    split = data.draw(st.integers(1, length - 1))
    ids = tokens(2, length, seed=1)
    changed = ids.clone()
    changed[:, split:] = tokens(2, length - split, seed=2)
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    _close(a[:, :split], b[:, :split])


@EXAMPLES
@given(spec=specs("decoder-only"), lengths=st.lists(st.integers(1, 7), min_size=2, max_size=3))
def test_decoder_left_padding_leaves_real_positions_unchanged(
    spec: ModelSpec, lengths: list[int]
) -> None:
    model = built(spec)
    width = max(lengths) + 1
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    ids = tokens(len(lengths), width, seed=3)  # padding holds random tokens: they must not count
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = model(ids, mask, positions).logits
        for row, length in enumerate(lengths):
            alone = model(ids[row : row + 1, width - length :]).logits[0]
            _close(batch[row, width - length :], alone)


@EXAMPLES
@given(
    spec=specs("decoder-only"),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    prefill=st.integers(1, 4),
    extra=st.integers(1, 4),
)
def test_decoder_token_by_token_with_the_cache_equals_the_full_forward(
    spec: ModelSpec, lengths: list[int], prefill: int, extra: int
) -> None:
    model = built(spec)
    width = max(lengths) + extra
    mask = torch.ones(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, : max(lengths) - length] = 0  # left padding, then `extra` generated tokens
    ids = tokens(len(lengths), width, seed=4).masked_fill(mask == 0, PAD)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefill = min(prefill, width - 1)
    with torch.no_grad():
        full = model(ids, mask, positions).logits
        out = model(ids[:, :prefill], mask[:, :prefill], positions[:, :prefill])
        steps = [out.logits]
        for t in range(prefill, width):
            out = model(ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], out.present)
            steps.append(out.logits)
    real = mask.bool()
    _close(torch.cat(steps, dim=1)[real], full[real])
    assert out.present[0].shape == (len(lengths), spec.kv_heads, width, spec.head_dim)


@EXAMPLES
@given(window=st.integers(1, 4), length=st.integers(2, 10), data=st.data())
def test_windowed_layer_ignores_keys_older_than_the_window_and_a_global_one_does_not(
    window: int, length: int, data: Any
) -> None:
    query = data.draw(st.integers(1, length - 1))
    old = data.draw(st.integers(0, query - 1))  # a key before the query
    changes: dict[str, Any] = {"layers": 1, "positions": POSITIONS["rope"]}
    local = built(
        variant("decoder-only", attention={"heads": 4, "sliding_window": window}, **changes)
    )
    causal = built(
        variant(
            "decoder-only",
            attention={"heads": 4, "sliding_window": window, "layer_pattern": ["global"]},
            **changes,
        )
    )
    causal.load_state_dict(local.state_dict())
    ids = tokens(2, length, seed=17)
    changed = ids.clone()
    changed[:, old] = (ids[:, old] + 1) % VOCAB
    with torch.no_grad():
        a, b = local(ids).logits[:, query], local(changed).logits[:, query]
        c, d = causal(ids).logits[:, query], causal(changed).logits[:, query]
    if query - old >= window:  # the query sees keys query - window + 1 .. query
        _close(a, b)
    else:
        assert _differs(a, b)
    assert _differs(c, d)


def test_decoder_accepts_an_empty_cache_for_the_first_step() -> None:
    """The exported graph has one signature: the first step passes tensors with past = 0."""
    spec = variant(
        "decoder-only", attention={"heads": 4, "kv_heads": 2}, positions={"type": "alibi"}
    )
    model = built(spec)
    ids, mask = tokens(2, 5), torch.ones(2, 5, dtype=torch.long)
    empty = [torch.zeros(2, 2, 0, spec.head_dim) for _ in range(2 * spec.layers)]
    with torch.no_grad():
        _close(model(ids, mask, None, empty).logits, model(ids, mask).logits)


# ----------------------------------------------------------------------------------------
# Encoder-only


@EXAMPLES
@given(spec=specs("encoder-only"), length=st.integers(2, 8))
def test_encoder_output_at_i_sees_later_tokens(spec: ModelSpec, length: int) -> None:
    model = built(spec)
    ids = tokens(1, length, seed=5)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % VOCAB
    with torch.no_grad():
        a = model(ids).last_hidden_state
        b = model(changed).last_hidden_state
    assert _differs(a[:, 0], b[:, 0])


@EXAMPLES
@given(spec=specs("encoder-only"), lengths=st.lists(st.integers(1, 7), min_size=2, max_size=3))
def test_encoder_right_padding_leaves_real_positions_unchanged(
    spec: ModelSpec, lengths: list[int]
) -> None:
    model = built(spec)
    width = max(lengths) + 1
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = tokens(len(lengths), width, seed=6)
    with torch.no_grad():
        batch = model(ids, mask)
        for row, length in enumerate(lengths):
            alone = model(ids[row : row + 1, :length])
            _close(batch.logits[row, :length], alone.logits[0])
            _close(batch.last_hidden_state[row, :length], alone.last_hidden_state[0])


# ----------------------------------------------------------------------------------------
# Encoder-decoder


@EXAMPLES
@given(spec=specs("encoder-decoder"), length=st.integers(2, 6), data=st.data())
def test_seq2seq_decoder_is_causal_and_encoder_bidirectional(
    spec: ModelSpec, length: int, data: Any
) -> None:
    model = built(spec)
    source = tokens(2, 6, seed=7)
    target = tokens(2, length, seed=8)
    split = data.draw(st.integers(1, length - 1))
    changed_target = target.clone()
    changed_target[:, split:] = tokens(2, length - split, seed=9)
    changed_source = source.clone()
    changed_source[:, -1] = (source[:, -1] + 1) % VOCAB
    with torch.no_grad():
        a = model(source, None, target).logits
        b = model(source, None, changed_target).logits
        _close(a[:, :split], b[:, :split])
        encoded = model.encode(source).last_hidden_state
        encoded_changed = model.encode(changed_source).last_hidden_state
    assert _differs(encoded[:, 0], encoded_changed[:, 0])


@EXAMPLES
@given(
    spec=specs("encoder-decoder"),
    source_lengths=st.lists(st.integers(1, 6), min_size=2, max_size=2),
    target_length=st.integers(1, 6),
)
def test_seq2seq_cached_decoding_equals_the_full_decode_and_ignores_source_padding(
    spec: ModelSpec, source_lengths: list[int], target_length: int
) -> None:
    model = built(spec)
    width = max(source_lengths) + 1
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, length in enumerate(source_lengths):
        mask[row, :length] = 1
    source = tokens(2, width, seed=10)
    target = tokens(2, target_length, seed=11)
    with torch.no_grad():
        encoded = model.encode(source, mask)
        full = model.decode(target, mask, encoded.cross_key_values).logits
        past, steps = None, []
        for t in range(target_length):
            out = model.decode(
                target[:, t : t + 1], mask, encoded.cross_key_values, None, None, past
            )
            steps.append(out.logits)
            past = out.present
        _close(torch.cat(steps, dim=1), full)
        for row, length in enumerate(source_lengths):
            alone = model.encode(source[row : row + 1, :length])
            _close(encoded.last_hidden_state[row, :length], alone.last_hidden_state[0])
            mine = model.decode(
                target[row : row + 1],
                torch.ones(1, length, dtype=torch.long),
                alone.cross_key_values,
            ).logits
            _close(full[row : row + 1], mine)


# ----------------------------------------------------------------------------------------
# Losses


def _shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total, count = torch.zeros(()), 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] != -100:
                total = total - F.log_softmax(logits[b, t], dim=-1)[labels[b, t + 1]]
                count += 1
    return total / count


@EXAMPLES
@given(spec=specs("decoder-only"), length=st.integers(3, 8), data=st.data())
def test_causal_lm_loss_is_the_shifted_cross_entropy(
    spec: ModelSpec, length: int, data: Any
) -> None:
    model = built(spec)
    ids = tokens(2, length, seed=12)
    labels = ids.clone()
    ignored = data.draw(st.lists(st.integers(0, length - 1), max_size=length - 2))
    labels[0, ignored] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    _close(out.loss, _shifted_cross_entropy(out.logits, labels))


@EXAMPLES
@given(spec=specs("encoder-only"), data=st.data())
def test_masked_lm_loss_counts_only_the_labelled_positions(spec: ModelSpec, data: Any) -> None:
    model = built(spec)
    ids = tokens(2, 6, seed=13)
    chosen = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
    labels = torch.full_like(ids, -100)
    labels[:, chosen] = tokens(2, len(chosen), seed=14)
    with torch.no_grad():
        out = model(ids, labels=labels)
    picked = out.logits[:, chosen].reshape(-1, VOCAB)
    _close(out.loss, F.cross_entropy(picked, labels[:, chosen].reshape(-1)))


@EXAMPLES
@given(spec=specs("encoder-decoder"))
def test_seq2seq_loss_is_the_cross_entropy_of_the_aligned_labels(spec: ModelSpec) -> None:
    model = built(spec)
    source, target = tokens(2, 5, seed=15), tokens(2, 4, seed=16)
    labels = target.clone()
    labels[1, 2:] = -100
    with torch.no_grad():
        out = model(source, None, target, labels=labels)
    keep = labels != -100
    _close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))


@pytest.mark.parametrize("heads", [3, 6, 8])
def test_alibi_slopes_follow_the_paper_for_any_head_count(heads: int) -> None:
    spec = variant(
        "decoder-only", d_model=heads * 4, attention={"heads": heads}, positions={"type": "alibi"}
    )
    module = load_module(spec)
    slopes = module.alibi_slopes(heads)
    # Press et al.'s reference: 2^(-8/n)... for the power of two below, then every other slope
    # of the next power of two.
    closest = 2 ** (heads.bit_length() - 1)
    first = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    second = [2 ** (-8 * (i + 1) / (2 * closest)) for i in range(2 * closest)][0::2]
    assert slopes == pytest.approx((first + second)[:heads])
