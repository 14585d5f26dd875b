"""The Hugging Face weight tables: one table per family, usable in both directions.

Each family's tiny random transformers model (hf_tiny.py) goes Hugging Face -> ours -> Hugging
Face and comes back exactly: every key of its ``state_dict()``, every tensor bit for bit. The
keys ``save_pretrained`` leaves out are the ones the table lists as ties or as the tied head.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hf_tiny
import pytest
import torch
from safetensors.torch import load_file

from llmspec.importers.hf.importer import HFImportError, weights_from_hf
from llmspec.importers.hf.mapping import (
    CONV1D,
    FUSED_QKV,
    FUSED_QKV_CONV1D,
    ROW,
    HFExportError,
    Rule,
    Transform,
    WeightTable,
    to_hf,
)
from llmspec.importers.hf.tables import TABLES

pytest.importorskip("transformers")


@dataclass(frozen=True)
class Variant:
    build: Callable[[Path], Any]
    table: str
    headed: bool = True


VARIANTS = {
    "bert-masked-lm": Variant(lambda d: hf_tiny.bert(d), "bert"),
    "bert-model": Variant(lambda d: hf_tiny.bert(d, masked_lm=False), "bert", headed=False),
    "gpt2": Variant(lambda d: hf_tiny.gpt2(d), "gpt2"),
    "gpt2-untied": Variant(lambda d: hf_tiny.gpt2(d, tie_word_embeddings=False), "gpt2"),
    "t5-v1.0": Variant(lambda d: hf_tiny.t5(d, num_decoder_layers=3), "t5"),
    "t5-v1.1": Variant(
        lambda d: hf_tiny.t5(d, untied_head=True, feed_forward_proj="gated-gelu"), "t5-gated"
    ),
    "bart": Variant(lambda d: hf_tiny.bart(d, decoder_layers=3), "bart"),
    "llama": Variant(lambda d: hf_tiny.llama(d), "llama"),
    "llama-tied": Variant(lambda d: hf_tiny.llama(d, untied_head=False), "llama"),
    "llama-bias": Variant(
        lambda d: hf_tiny.llama(d, attention_bias=True, mlp_bias=True, untied_head=False), "llama"
    ),
    "roberta-masked-lm": Variant(lambda d: hf_tiny.roberta(d), "roberta"),
    "roberta-model": Variant(
        lambda d: hf_tiny.roberta(d, masked_lm=False), "roberta", headed=False
    ),
    "xlm-roberta": Variant(lambda d: hf_tiny.roberta(d, xlm=True), "xlm-roberta"),
    "distilbert-masked-lm": Variant(lambda d: hf_tiny.distilbert(d), "distilbert"),
    "distilbert-model": Variant(
        lambda d: hf_tiny.distilbert(d, masked_lm=False), "distilbert", headed=False
    ),
    "opt": Variant(lambda d: hf_tiny.opt(d), "opt"),
    "opt-post-norm": Variant(lambda d: hf_tiny.opt(d, do_layer_norm_before=False), "opt"),
    "mistral": Variant(lambda d: hf_tiny.mistral(d), "mistral"),
    "mt5": Variant(lambda d: hf_tiny.mt5(d), "mt5"),
    "qwen2": Variant(lambda d: hf_tiny.qwen2(d), "qwen2"),
    "qwen3": Variant(lambda d: hf_tiny.qwen3(d, tie_word_embeddings=False), "qwen3"),
}


@dataclass
class Source:
    config: dict[str, Any]
    state: dict[str, torch.Tensor]  # the model's state_dict()
    saved: dict[str, torch.Tensor]  # what save_pretrained wrote
    table: WeightTable
    headed: bool


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    built: dict[str, Source] = {}
    for name, variant in VARIANTS.items():
        directory = tmp_path_factory.mktemp(name)
        model = variant.build(directory)
        built[name] = Source(
            config=json.loads((directory / "config.json").read_text()),
            state={k: v.detach().clone() for k, v in model.state_dict().items()},
            saved=load_file(directory / "model.safetensors"),
            table=TABLES[variant.table],
            headed=variant.headed,
        )
    return built


def _hf_name(source: Source, name: str) -> str:
    table = source.table
    if not source.headed or name.startswith(table.unprefixed):
        return name
    return table.prefix + name


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_to_ours_and_back_is_the_state_dict_exactly(
    variant: str, sources: dict[str, Source]
) -> None:
    source = sources[variant]
    ours = weights_from_hf(source.config, source.state)
    _assert_same(to_hf(ours, source.table, headed=source.headed), source.state)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_keys_save_pretrained_drops_are_the_tables_ties_and_head(
    variant: str, sources: dict[str, Source]
) -> None:
    source = sources[variant]
    listed = {_hf_name(source, name) for name in [*source.table.ties, source.table.head]}
    assert set(source.state) - set(source.saved) <= listed
    assert set(source.saved) <= set(source.state)
    _assert_same(
        weights_from_hf(source.config, source.saved), weights_from_hf(source.config, source.state)
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_hf_key_is_consumed_and_an_unmapped_one_is_named(
    variant: str, sources: dict[str, Source]
) -> None:
    source = sources[variant]
    state = {**source.state, "score.weight": torch.zeros(2, 32)}
    with pytest.raises(HFImportError, match=r"weights with no place in the spec: score\.weight"):
        weights_from_hf(source.config, state)


@pytest.mark.parametrize("variant", ["bert-masked-lm", "gpt2", "t5-v1.0", "bart", "llama"])
def test_the_unused_tensors_old_checkpoints_carry_are_skipped_and_not_written_back(
    variant: str, sources: dict[str, Source]
) -> None:
    source = sources[variant]
    assert source.table.unused, "every table lists the stale tensors of its old checkpoints"
    extra = {_hf_name(source, name.format(0)): torch.zeros(3) for name in source.table.unused}
    ours = weights_from_hf(source.config, {**source.state, **extra})
    _assert_same(ours, weights_from_hf(source.config, source.state))
    assert not set(extra) & set(to_hf(ours, source.table, headed=source.headed))


def test_legacy_gamma_and_beta_norm_names_import_alike(sources: dict[str, Source]) -> None:
    source = sources["bert-masked-lm"]
    legacy = {
        key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): t
        for key, t in source.saved.items()
    }
    assert legacy.keys() != source.saved.keys()
    _assert_same(
        weights_from_hf(source.config, legacy), weights_from_hf(source.config, source.saved)
    )


def test_a_missing_weight_is_named_in_the_sources_naming(sources: dict[str, Source]) -> None:
    source = sources["gpt2"]
    state = {k: v for k, v in source.saved.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(HFImportError, match=r"missing weight 'h\.1\.mlp\.c_fc\.bias'"):
        weights_from_hf(source.config, state)


def test_a_fused_attention_of_the_wrong_width_is_refused_by_name(
    sources: dict[str, Source],
) -> None:
    source = sources["gpt2"]
    state = dict(source.saved)
    state["transformer.h.0.attn.c_attn.weight"] = torch.zeros(32, 90)
    state["transformer.h.0.attn.c_attn.bias"] = torch.zeros(90)
    with pytest.raises(
        HFImportError, match=r"h\.0\.attn\.c_attn\.weight has shape \[32, 90\], expected \[32, 96\]"
    ):
        weights_from_hf(source.config, state)


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("transformer.h.0.attn.c_attn.weight", (32, 96, 1)),
        ("transformer.h.0.attn.c_attn.bias", (96, 1)),
        ("transformer.h.1.mlp.c_proj.weight", (128,)),
    ],
)
def test_a_tensor_a_transform_cannot_take_is_refused_by_name(
    key: str, shape: tuple[int, ...], sources: dict[str, Source]
) -> None:
    source = sources["gpt2"]
    state = {**source.saved, key: torch.zeros(shape)}
    with pytest.raises(HFImportError, match=rf"{key.removeprefix('transformer.')} has shape"):
        weights_from_hf(source.config, state)


def test_to_hf_names_a_tensor_the_table_has_no_name_for(sources: dict[str, Source]) -> None:
    source = sources["llama"]
    ours = weights_from_hf(source.config, source.state)
    with pytest.raises(HFExportError, match=r"decoder\.layers\.0\.mlp\.extra\.weight"):
        to_hf({**ours, "decoder.layers.0.mlp.extra.weight": torch.zeros(2)}, source.table)
    with pytest.raises(HFExportError, match=r"pooler\.dense\.weight"):
        to_hf({**ours, "pooler.dense.weight": torch.zeros(2)}, source.table)


def test_to_hf_names_the_missing_part_of_a_fused_tensor(sources: dict[str, Source]) -> None:
    source = sources["gpt2"]
    ours = weights_from_hf(source.config, source.state)
    del ours["decoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(HFExportError, match=r"decoder\.layers\.1\.self_attn\.k_proj\.bias"):
        to_hf(ours, source.table)


@pytest.mark.parametrize("name", TABLES)
def test_tables_have_no_duplicate_targets_and_list_each_hf_name_once(name: str) -> None:
    table = TABLES[name]
    targets = [target for rule in table.rules.values() for target in rule.targets]
    assert len(targets) == len(set(targets)) and "lm_head.weight" not in targets
    others = [*table.ties, *table.unused, table.head]
    assert len(others) == len(set(others)) and not set(others) & set(table.names)


def test_a_table_with_a_duplicate_target_is_refused() -> None:
    with pytest.raises(ValueError, match="mapped more than once"):
        WeightTable(
            family="broken",
            names={"a.weight": "embed_tokens.weight", "b.weight": "embed_tokens.weight"},
            head="lm_head.weight",
        )


@pytest.mark.parametrize(
    ("transform", "shape"),
    [(CONV1D, (4, 6)), (FUSED_QKV_CONV1D, (4, 12)), (FUSED_QKV, (12,)), (ROW, (1, 7))],
)
def test_each_transform_is_undone_by_its_inverse(
    transform: Transform, shape: tuple[int, ...]
) -> None:
    tensor = torch.randn(shape)
    assert torch.equal(transform.to_hf(transform.to_ours(tensor)), tensor)


def test_a_rule_splitting_into_q_k_v_gives_linear_weights(sources: dict[str, Source]) -> None:
    rule = TABLES["gpt2"].rules["h.{}.attn.c_attn.weight"]
    assert isinstance(rule, Rule) and rule.transform is FUSED_QKV_CONV1D
    fused = sources["gpt2"].state["transformer.h.0.attn.c_attn.weight"]  # Conv1D: [in, 3 * out]
    q, k, v = FUSED_QKV_CONV1D.to_ours(fused)
    assert torch.equal(q, fused[:, :32].t()) and torch.equal(k, fused[:, 32:64].t())
    assert torch.equal(v, fused[:, 64:].t())
