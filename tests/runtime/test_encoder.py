"""Encoder-only models: fill_mask and embed."""

import numpy as np
import pytest
import torch

import llmspec
import runtime
from runtime import artifact as fmt


@pytest.fixture(scope="module")
def bert(tiny_artifact):
    return runtime.load(tiny_artifact("tiny-encoder"), device="cpu")


def test_fill_mask_returns_the_top_k_candidates_most_likely_first(bert):
    candidates = bert.fill_mask("The cat [MASK] on the mat", top_k=7)
    assert len(candidates) == 7
    probabilities = [c.probability for c in candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1
    assert all(0 <= c.token_id < bert.vocab_size for c in candidates)
    for c in candidates:
        assert c.text == f"The cat {c.token} on the mat"


def test_fill_mask_probabilities_are_pytorch_softmax(bert):
    model = llmspec.build(bert.path / fmt.SPEC, dtype="fp32", weights=bert.path / fmt.WEIGHTS)
    text = "a [MASK] b"
    ids = [bert.special_tokens["bos"], *bert.encode(text), bert.special_tokens["eos"]]
    place = ids.index(bert.special_tokens["mask"])
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).logits
    expected = torch.softmax(logits[0, place].double(), -1).numpy()
    for c in bert.fill_mask(text, top_k=3):
        assert c.probability == pytest.approx(expected[c.token_id], rel=1e-4)


@pytest.mark.parametrize(
    ("text", "top_k", "message"),
    [
        ("no mask here", 5, "has no mask tokens; write exactly one '\\[MASK\\]'"),
        ("[MASK] and [MASK]", 5, "has 2 mask tokens"),
        ("a [MASK]", 0, "top_k must be a whole number >= 1"),
        ("", 5, "text 0 is empty"),
        ("x" * 200 + "[MASK]", 5, "beyond the context window of 128"),
    ],
)
def test_fill_mask_bad_input(bert, text, top_k, message):
    with pytest.raises(runtime.RuntimeInputError, match=message):
        bert.fill_mask(text, top_k=top_k)


def test_embed_shapes_and_pooling(bert):
    texts = ["hello", "a longer sentence than the first one"]
    mean = bert.embed(texts)
    cls = bert.embed(texts, pooling="cls")
    assert mean.shape == cls.shape == (2, 64) and mean.dtype == np.float32
    assert not np.allclose(mean, cls)
    unit = bert.embed(texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_text_embeds_the_same_alone_and_in_a_batch_with_a_longer_one(bert, pooling):
    alone = bert.embed("short", pooling=pooling)
    batch = bert.embed(["short", "a much longer text that forces padding"], pooling=pooling)
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)


def test_mean_pooling_is_the_mean_of_the_pytorch_hidden_states(bert):
    model = llmspec.build(bert.path / fmt.SPEC, dtype="fp32", weights=bert.path / fmt.WEIGHTS)
    ids = [bert.special_tokens["bos"], *bert.encode("hello"), bert.special_tokens["eos"]]
    with torch.no_grad():
        out = model.eval()(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    expected = out.last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(bert.embed("hello")[0], expected, atol=1e-4)


@pytest.mark.parametrize(
    ("texts", "pooling", "message"),
    [
        ([], "mean", "no texts given"),
        (["ok", ""], "mean", "text 1 is empty"),
        (["ok", 3], "mean", "text 1 must be a string"),
        ("ok", "max", "pooling must be one of mean, cls"),
    ],
)
def test_embed_bad_input(bert, texts, pooling, message):
    with pytest.raises(runtime.RuntimeInputError, match=message):
        bert.embed(texts, pooling=pooling)
