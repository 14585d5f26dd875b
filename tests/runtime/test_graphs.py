"""runtime.graphs, the one feeder of the graph contract: the properties every consumer (the
generation loop, verify, eval, the export gate) relies on, on artifacts with varied weights so a
wrong cache, mask or position changes the numbers."""

import ast
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import artifact as fmt
from runtime.artifact import ArtifactError
from runtime.graphs import (
    DecoderGraph,
    EncoderGraph,
    Seq2SeqGraphs,
    cache_names,
    left_padded,
    positions,
    require,
    right_padded,
)
from runtime.session import Graph

ATOL = 1e-4


@pytest.fixture(scope="module")
def gpt(varied_artifact):
    return runtime.load(varied_artifact("tiny-gpt"), device="cpu")


@pytest.fixture(scope="module")
def t5(varied_artifact):
    return runtime.load(varied_artifact("tiny-t5"), device="cpu")


@pytest.fixture(scope="module")
def bert(tiny_artifact):
    return runtime.load(tiny_artifact("tiny-encoder"), device="cpu")


def _rows(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


# ---------------------------------------------------------------------------------------------
# Building the inputs


def test_positions_count_real_tokens_under_left_padding() -> None:
    ids, mask = left_padded([[5, 6, 7], [8], [1, 2]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 1, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    assert positions(mask).dtype == np.int64


def test_right_padding_puts_real_tokens_from_position_zero() -> None:
    ids, mask = right_padded([[5, 6, 7], [8]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_cache_names_pair_each_past_input_with_its_present_output() -> None:
    assert cache_names(2) == [
        ("past_key_values.0.key", "present.0.key"),
        ("past_key_values.0.value", "present.0.value"),
        ("past_key_values.1.key", "present.1.key"),
        ("past_key_values.1.value", "present.1.value"),
    ]
    assert cache_names(1, "encoder")[0] == (
        fmt.past_name(0, "key", "encoder"),
        fmt.present_name(0, "key", "encoder"),
    )


def test_a_graph_lacking_a_contract_input_is_refused_naming_it(bert) -> None:
    graph = bert._graphs[fmt.ENCODER_GRAPH]
    with pytest.raises(ArtifactError, match="lacks the inputs position_ids; export the artifact"):
        require(graph, [fmt.INPUT_IDS, fmt.POSITION_IDS])
    with pytest.raises(ArtifactError, match="lacks the inputs"):
        DecoderGraph(graph, 2, 2, 16)


# ---------------------------------------------------------------------------------------------
# Decoder-only


def test_decoder_empty_cache_has_past_length_zero_for_every_layer(gpt) -> None:
    feeder = gpt.feeder
    cache = feeder.empty_cache(3, max_length=10)
    manifest = gpt.manifest
    names = cache_names(manifest.layers)
    assert sorted(cache.buffers) == sorted(past for past, _ in names)
    assert {cache.buffers[past][0] for past, _ in names} == {present for _, present in names}
    assert (cache.rows, cache.length, cache.max_length) == (3, 0, 10)
    for value in cache.host().values():
        assert value.shape == (3, manifest.kv_heads, 0, manifest.head_dim)


def test_decoder_steps_write_the_cache_in_place(gpt) -> None:
    """Format 2: the graph writes each step's keys and values into the buffers it was given
    (bound as past and present), so a step with room allocates and copies nothing."""
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [5, 3], seed=13), gpt.pad_id)
    _, cache = feeder.prefill(ids, mask, max_length=ids.shape[1] + 4)
    arrays = {name: buffer.array for name, (_, buffer) in cache.buffers.items()}
    before = {name: array.copy() for name, array in arrays.items()}
    width = ids.shape[1]
    for _ in range(4):
        _, mask, after = feeder.step(np.array([3, 4]), mask, cache)
        assert after is cache
    assert cache.length == width + 4
    for name, (_, buffer) in cache.buffers.items():
        assert buffer.array is arrays[name]
        # the prompt's columns are untouched, the four new ones written
        np.testing.assert_array_equal(buffer.array[:, :, :width], before[name][:, :, :width])
        assert np.abs(buffer.array[:, :, width : width + 4]).sum() > 0


def test_a_caches_binding_is_kept_across_steps_and_gives_the_plain_runs_logits(gpt) -> None:
    """Steps reuse one IOBinding per cache (its buffers bound once, the logits written to a
    fresh host array): the logits equal a run that binds everything anew."""
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [4, 6], seed=16), gpt.pad_id)
    _, kept = feeder.prefill(ids, mask, max_length=ids.shape[1] + 3)
    _, plain = feeder.prefill(ids, mask, max_length=ids.shape[1] + 3)
    (binding,) = kept.bindings.values()
    seen = mask
    for token in (5, 6, 7):
        tokens = np.array([token, token + 1])
        step, new_mask, kept = feeder.step(tokens, seen, kept)
        inputs = {
            fmt.INPUT_IDS: tokens[:, None],
            fmt.ATTENTION_MASK: new_mask,
            fmt.POSITION_IDS: seen.sum(axis=1, keepdims=True),
            fmt.LOGITS_TO_KEEP: np.array(1, dtype=np.int64),
        }
        out = feeder.graph.run(inputs, {}, (fmt.LOGITS,), plain.buffers)  # a fresh binding
        plain.length += 1
        np.testing.assert_array_equal(step, out[fmt.LOGITS][:, -1])
        seen = new_mask
    assert list(kept.bindings.values()) == [binding]


def test_decoder_cache_grows_when_a_run_needs_more_room(gpt) -> None:
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [4, 2], seed=14), gpt.pad_id)
    _, small = feeder.prefill(ids, mask, max_length=4)
    _, roomy = feeder.prefill(ids, mask, max_length=12)
    assert small.max_length == 4
    for _ in range(5):
        a, _, small = feeder.step(np.array([1, 2]), mask, small)
        b, mask, roomy = feeder.step(np.array([1, 2]), mask, roomy)
        np.testing.assert_allclose(a, b, atol=ATOL)
    assert small.max_length >= 9 and small.length == roomy.length == 9


def test_decoder_logits_to_keep_selects_the_last_positions(gpt) -> None:
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [6, 4], seed=15), gpt.pad_id)
    every, _ = feeder.run(ids, mask)
    assert every.shape == (2, 6, gpt.vocab_size)
    for keep in (1, 3):
        kept, _ = feeder.run(ids, mask, keep=keep)
        assert kept.shape == (2, keep, gpt.vocab_size)
        np.testing.assert_allclose(kept, every[:, -keep:], atol=ATOL)


def test_decoder_prefill_then_cached_steps_equals_one_full_pass(gpt) -> None:
    feeder = gpt.feeder
    rows = _rows(gpt.vocab_size, [9, 4])
    ids, mask = left_padded(rows, gpt.pad_id)
    full, _ = feeder.run(ids, mask)
    split = 5
    logits, cache = feeder.run(ids[:, :split], mask[:, :split])
    real = mask[:, :split].astype(bool)
    np.testing.assert_allclose(logits[real], full[:, :split][real], atol=ATOL)
    step_mask = mask[:, :split]
    for at in range(split, ids.shape[1]):
        step, step_mask, cache = feeder.step(ids[:, at], step_mask, cache)
        np.testing.assert_allclose(step, full[:, at], atol=ATOL)
    assert step_mask.tolist() == mask.tolist()


def test_decoder_left_padded_row_equals_the_row_alone(gpt) -> None:
    feeder = gpt.feeder
    short, long = _rows(gpt.vocab_size, [3, 8], seed=1)
    alone, _ = feeder.run(np.array([short]), np.ones((1, 3), dtype=np.int64))
    ids, mask = left_padded([short, long], gpt.pad_id)
    batch, _ = feeder.run(ids, mask)
    np.testing.assert_allclose(batch[0, -3:], alone[0], atol=ATOL)


@pytest.mark.parametrize("chunk_tokens", [1, 4, 6])
def test_decoder_chunked_prefill_gives_the_one_run_last_logits_and_cache(gpt, chunk_tokens) -> None:
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [7, 2, 5], seed=2), gpt.pad_id)
    full, full_cache = feeder.run(ids, mask)
    last, cache = feeder.prefill(ids, mask, chunk_tokens=chunk_tokens)
    assert last.shape == (3, gpt.vocab_size)
    np.testing.assert_allclose(last, full[:, -1], atol=ATOL)
    assert cache.length == full_cache.length == ids.shape[1]
    real = mask.astype(bool)  # what padding columns hold is never read
    for name, value in full_cache.host().items():
        chunked = cache.host()[name].transpose(0, 2, 1, 3)[real]
        np.testing.assert_allclose(chunked, value.transpose(0, 2, 1, 3)[real], atol=ATOL)
    tokens = np.array([1, 2, 3])
    after_full, _, _ = feeder.step(tokens, mask, full_cache)
    after_chunks, _, _ = feeder.step(tokens, mask, cache)
    np.testing.assert_allclose(after_chunks, after_full, atol=ATOL)


def test_decoder_step_masks_a_finished_row_and_keeps_its_position(gpt) -> None:
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [4, 4], seed=3), gpt.pad_id)
    _, cache = feeder.prefill(ids, mask)
    alive = np.array([True, False])
    _, new_mask, cache = feeder.step(np.array([7, 0]), mask, cache, alive)
    assert new_mask[:, -1].tolist() == [1, 0]
    # the dead row's token is masked out: the next token of that row sees only its prompt
    step, _, _ = feeder.step(np.array([7, 9]), new_mask, cache)
    reference_ids = np.array([[*ids[1].tolist(), 9]])
    reference, _ = feeder.run(reference_ids, np.ones_like(reference_ids))
    np.testing.assert_allclose(step[1], reference[0, -1], atol=ATOL)


def test_decoder_cache_reorder_permutes_rows(gpt) -> None:
    feeder = gpt.feeder
    ids, mask = left_padded(_rows(gpt.vocab_size, [5, 3, 6], seed=4), gpt.pad_id)
    _, cache = feeder.prefill(ids, mask)
    _, other = feeder.prefill(ids, mask)  # a run extends its cache in place: one for each side
    tokens = np.array([4, 5, 6])
    before = {name: value.copy() for name, value in cache.host().items()}
    step, _, _ = feeder.step(tokens, mask, other)
    order = np.array([2, 0, 0])
    moved = feeder.reorder(cache, order)
    assert moved is cache  # as many rows: in place
    for name, value in before.items():
        np.testing.assert_array_equal(moved.host()[name], value[order])
    reordered, _, _ = feeder.step(tokens[order], mask[order], moved)
    np.testing.assert_allclose(reordered, step[order], atol=ATOL)


def test_an_adopted_session_gives_the_runtime_graph_bit_identical_logits(gpt) -> None:
    graph = gpt._graphs[fmt.DECODER_GRAPH]
    adopted = Graph.adopt(graph.session, graph.path)
    assert adopted.bind is None and adopted.inputs == graph.inputs
    ids, mask = left_padded(_rows(gpt.vocab_size, [6, 2], seed=5), gpt.pad_id)
    expected, _ = gpt.feeder.run(ids, mask)
    actual, _ = DecoderGraph.of(adopted, gpt.manifest).run(ids, mask)
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------------
# Encoder-only


def test_encoder_right_padding_leaves_real_positions_unchanged(bert) -> None:
    feeder = bert.feeder
    short, long = _rows(bert.vocab_size, [4, 9], seed=6)
    alone = feeder.run(np.array([short]), np.ones((1, 4), dtype=np.int64))
    ids, mask = right_padded([short, long], bert.pad_id)
    batch = feeder.run(ids, mask)
    for name in (fmt.LAST_HIDDEN_STATE, fmt.LOGITS):
        np.testing.assert_allclose(batch[name][0, :4], alone[name][0], atol=ATOL)


def test_encoder_feeds_token_types_where_the_graph_takes_them(bert) -> None:
    feeder = bert.feeder
    assert feeder.token_types
    ids, mask = right_padded(_rows(bert.vocab_size, [6], seed=7), bert.pad_id)
    feeds = feeder.feeds(ids, mask)
    assert feeds[fmt.TOKEN_TYPE_IDS].tolist() == np.zeros_like(ids).tolist()
    types = np.ones_like(ids)
    zeros = feeder.run(ids, mask)[fmt.LOGITS]
    ones = feeder.run(ids, mask, token_types=types)[fmt.LOGITS]
    assert np.abs(zeros - ones).max() > ATOL  # the token types reach the graph


# ---------------------------------------------------------------------------------------------
# Encoder-decoder


def test_seq2seq_encode_gives_every_layers_cross_keys_and_values(t5) -> None:
    feeder = t5.feeder
    ids, mask = right_padded(_rows(t5.vocab_size, [5, 3], seed=8), t5.pad_id)
    encoded = feeder.encode(ids, mask, host=(fmt.LAST_HIDDEN_STATE,))
    assert sorted(encoded.cross) == sorted(p for p, _ in cache_names(t5.manifest.layers, "encoder"))
    assert encoded.last_hidden_state.shape[:2] == (2, 5)
    assert encoded.mask is mask


def test_seq2seq_prefill_then_cached_steps_equals_one_full_pass(t5) -> None:
    feeder = t5.feeder
    source, source_mask = right_padded(_rows(t5.vocab_size, [6, 3], seed=9), t5.pad_id)
    encoded = feeder.encode(source, source_mask)
    start = t5.special_tokens["decoder_start"]
    target = np.array([[start, *row] for row in _rows(t5.vocab_size, [6, 6], seed=10)])
    full, _ = feeder.decode(target, encoded)
    split = 2
    logits, cache = feeder.decode(target[:, :split], encoded)
    np.testing.assert_allclose(logits, full[:, :split], atol=ATOL)
    mask = np.ones((2, split), dtype=np.int64)
    for at in range(split, target.shape[1]):
        step, mask, cache = feeder.step(target[:, at], encoded, mask, cache)
        np.testing.assert_allclose(step, full[:, at], atol=ATOL)


def test_seq2seq_source_padding_leaves_the_decoder_logits_unchanged(t5) -> None:
    feeder = t5.feeder
    short, long = _rows(t5.vocab_size, [3, 7], seed=11)
    start = t5.special_tokens["decoder_start"]
    target = np.array([[start, 4, 5]])
    alone = feeder.encode(np.array([short]), np.ones((1, 3), dtype=np.int64))
    expected, _ = feeder.decode(target, alone)
    ids, mask = right_padded([short, long], t5.pad_id)
    batch, _ = feeder.decode(np.repeat(target, 2, axis=0), feeder.encode(ids, mask))
    np.testing.assert_allclose(batch[0], expected[0], atol=ATOL)


def test_seq2seq_reorder_permutes_the_source_and_the_cache(t5) -> None:
    feeder = t5.feeder
    source, source_mask = right_padded(_rows(t5.vocab_size, [4, 6], seed=12), t5.pad_id)
    encoded = feeder.encode(source, source_mask)
    start = t5.special_tokens["decoder_start"]
    first = np.full((2, 1), start, dtype=np.int64)
    _, cache = feeder.decode(first, encoded)
    _, other = feeder.decode(first, encoded)  # a run extends its cache in place
    mask = np.ones((2, 1), dtype=np.int64)
    tokens = np.array([3, 8])
    step, _, _ = feeder.step(tokens, encoded, mask, other)
    order = np.array([1, 1, 0])
    moved = feeder.reorder_encoded(encoded, order)
    assert moved.mask.tolist() == source_mask[order].tolist()
    for name, value in encoded.cross.items():
        np.testing.assert_array_equal(moved.cross[name], value[order])
    reordered, _, _ = feeder.step(tokens[order], moved, mask[order], feeder.reorder(cache, order))
    np.testing.assert_allclose(reordered, step[order], atol=ATOL)


def test_the_models_feeders_are_the_family_classes(gpt, t5, bert) -> None:
    assert isinstance(gpt.feeder, DecoderGraph)
    assert isinstance(t5.feeder, Seq2SeqGraphs)
    assert isinstance(bert.feeder, EncoderGraph)


# ---------------------------------------------------------------------------------------------
# Sessions opened elsewhere, and the one feeder


def test_the_feeder_reports_the_cache_element_type(gpt, t5) -> None:
    assert gpt.feeder.cache_type == "float"
    assert t5.feeder.cache_type == "float"


def test_an_adopted_session_keeps_onnx_runtimes_own_errors(gpt) -> None:
    """verify and the export gate report ONNX Runtime's error as before; a loaded artifact's
    graph turns it into an ArtifactError naming the graph."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    graph = gpt._graphs[fmt.DECODER_GRAPH]
    cache = gpt.feeder.empty_cache(1)
    wrong_rank = {
        fmt.INPUT_IDS: np.zeros(3, dtype=np.int64),
        fmt.ATTENTION_MASK: np.ones((1, 3), dtype=np.int64),
        fmt.POSITION_IDS: np.zeros((1, 3), dtype=np.int64),
    }
    with pytest.raises(ArtifactError, match="decoder.onnx: ONNX Runtime refused"):
        graph.run(wrong_rank, {}, host=(), buffers=cache.buffers)
    with pytest.raises(InvalidArgument):
        Graph.adopt(graph.session, graph.path).run(wrong_rank, {}, host=(), buffers=cache.buffers)


def test_only_runtime_graphs_feeds_our_graphs() -> None:
    """The graph contract has one feeder: outside runtime/graphs.py, only the format's own
    definitions (runtime/artifact.py) and the exporter that names the graphs' inputs
    (llmspec/exporter/graphs.py) spell the contract's feed names."""
    root = Path(__file__).resolve().parents[2]
    spelled = {"POSITION_IDS", "ENCODER_ATTENTION_MASK", "TOKEN_TYPE_IDS", "past_name"}
    allowed = {"runtime/graphs.py", "runtime/artifact.py", "llmspec/exporter/graphs.py"}
    found = []
    for package in ("llmspec", "runtime", "bench"):
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            if where in allowed or any(part.startswith(".") for part in Path(where).parts):
                continue  # bench/.envs: the peers' virtual environments
            for node in ast.walk(ast.parse(path.read_text())):
                name = (
                    node.attr
                    if isinstance(node, ast.Attribute)
                    else node.id
                    if isinstance(node, ast.Name)
                    else None
                )
                literal = (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value.startswith("past_key_values.")
                )
                if name in spelled or literal:
                    found.append(f"{where}:{node.lineno}")
    assert found == []
