"""The spec's generation section from a Hugging Face generation_config.json.

Generation defaults come from ``generation_config.json`` where there is one (greedy,
sampling with temperature/top-k/top-p/min-p/typical-p, beam search with its length penalty and
early stopping; repetition penalty and no-repeat-ngram before the selector; ``max_new_tokens``,
or for an encoder-decoder model ``max_length`` less the decoder's start token), else greedy.
Sampling steps follow transformers' order (temperature, top-k, top-p, min-p, typical) and its
defaults (top-k 50 when the file leaves it unset). Settings the spec's chain cannot express
(:data:`NOT_EXPRESSIBLE`: ``forced_eos_token_id``, a penalty together with beam search,
``min_new_tokens``, contrastive search, ...) are left out and listed in the spec's header
comment: they are decoding defaults, not the model. Models without an eos token get no
generation section. A context shorter than the spec's default limit (64 new tokens) is the
limit when the file sets none. The ids of an ``eos_token_id`` list besides eos
(:func:`eos_ids`) are the section's ``stop_tokens``, by their texts.
"""

from __future__ import annotations

import json
from typing import Any

from llmspec.importers.hf.mapping import HFImportError

__all__ = ["NOT_EXPRESSIBLE", "eos_ids", "generation_section"]

SAMPLING_TOP_K = 50  # transformers' top_k when sampling and the file leaves it unset
DEFAULT_MAX_NEW_TOKENS = 64  # the spec's generation.max_new_tokens when a section leaves it out

# generation_config.json keys that change what transformers generates but have no step in the
# spec's chain, each with the values that leave decoding unchanged. Set to anything else, the
# key is listed as not imported.
NOT_EXPRESSIBLE: dict[str, tuple[Any, ...]] = {
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "forced_decoder_ids": (None, []),
    "bad_words_ids": (None, []),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "sequence_bias": (None, {}, []),
    "penalty_alpha": (None, 0, 0.0),  # contrastive search
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0, 0.0),
    "guidance_scale": (None, 1, 1.0),
    "top_h": (None,),
    "epsilon_cutoff": (None, 0, 0.0),
    "eta_cutoff": (None, 0, 0.0),
    "encoder_repetition_penalty": (None, 1, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "exponential_decay_length_penalty": (None,),
    "num_return_sequences": (None, 1),
    "stop_strings": (None, [], ""),
    "constraints": (None, []),
    "force_words_ids": (None, []),
    "watermarking_config": (None, {}),
}


def eos_ids(config: dict[str, Any], generation: dict[str, Any]) -> list[int]:
    """Every id on which transformers' generate stops: generation_config.json's
    ``eos_token_id`` where the file gives one (transformers then ignores config.json's), else
    config.json's; an id or a list (Llama 3.1: ``[128001, 128008, 128009]``), in order, each
    once. The first of config.json's is the spec's eos; the others become
    ``generation.stop_tokens``."""
    where, value = "generation_config.json", generation.get("eos_token_id")
    if value is None:
        where, value = "config.json", config.get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    for token_id in values:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise HFImportError(
                f"{where}: eos_token_id must be a token id or a list of token ids, got "
                f"{json.dumps(value)}"
            )
    return list(dict.fromkeys(values))


def _max_new_tokens(config: dict[str, Any], encoder_decoder: bool) -> tuple[int | None, list[str]]:
    """``max_new_tokens``, else an encoder-decoder's ``max_length`` (it counts the decoder's
    start token); a decoder-only ``max_length`` counts the prompt, which the spec's limit does
    not."""
    new = config.get("max_new_tokens")
    if isinstance(new, int) and not isinstance(new, bool) and new > 0:
        return new, []
    length = config.get("max_length")
    if isinstance(length, bool) or not isinstance(length, int):
        return None, []
    if encoder_decoder and length > 1:
        return length - 1, []
    if encoder_decoder:
        return None, [f"max_length = {length} (no token after the decoder's start token)"]
    return None, [f"max_length = {length} (it counts the prompt; max_new_tokens does not)"]


def generation_section(
    config: dict[str, Any],
    has_eos: bool,
    *,
    encoder_decoder: bool = False,
    context_length: int | None = None,
    stop_tokens: list[str] | None = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The spec's generation section from generation_config.json, and what it left out (a
    limit beyond ``context_length`` too: no request could reach it); ``stop_tokens`` are the
    texts of the ids besides eos that end generation (:func:`eos_ids`)."""
    if not has_eos:
        return None, []
    left_out: list[str] = []
    steps: list[dict[str, Any]] = []
    penalty = config.get("repetition_penalty")
    if penalty not in (None, 1, 1.0):
        steps.append({"type": "repetition_penalty", "penalty": penalty})
    ngram = config.get("no_repeat_ngram_size")
    if ngram:
        steps.append({"type": "no_repeat_ngram", "n": ngram})
    beams = config.get("num_beams") or 1
    if beams > 1:
        if config.get("do_sample"):
            left_out.append("do_sample with num_beams > 1 (beam sampling)")
        left_out.extend(f"{s['type']} with beam search" for s in steps)
        early = config.get("early_stopping")
        length_penalty = config.get("length_penalty")
        if early == "never":
            left_out.append('early_stopping = "never"')
        steps = [
            {
                "type": "beam_search",
                "beams": beams,
                "length_penalty": 1.0 if length_penalty is None else length_penalty,
                "early_stopping": early is True,
            }
        ]
    elif config.get("do_sample"):
        temperature = config.get("temperature")
        if temperature not in (None, 1, 1.0):
            steps.append({"type": "temperature", "value": temperature})
        top_k = config.get("top_k")
        top_k = SAMPLING_TOP_K if top_k is None else top_k
        if top_k:
            steps.append({"type": "top_k", "k": top_k})
        top_p = config.get("top_p")
        if top_p not in (None, 1, 1.0):
            steps.append({"type": "top_p", "p": top_p})
        if config.get("min_p"):
            steps.append({"type": "min_p", "p": config["min_p"]})
        typical = config.get("typical_p")
        if typical not in (None, 1, 1.0):
            steps.append({"type": "typical", "p": typical})
        steps.append({"type": "sample"})
    else:
        steps.append({"type": "greedy"})
    for key, neutral in NOT_EXPRESSIBLE.items():
        if key in config and config[key] not in neutral:
            left_out.append(f"{key} = {json.dumps(config[key])}")
    section: dict[str, Any] = {"chain": steps}
    limit, limit_left_out = _max_new_tokens(config, encoder_decoder)
    left_out.extend(limit_left_out)
    if limit is not None and context_length is not None and limit > context_length:
        left_out.append(
            f"a limit of {limit} new tokens (beyond the context window of {context_length})"
        )
    elif limit is not None:
        section["max_new_tokens"] = limit
    elif context_length is not None and context_length < DEFAULT_MAX_NEW_TOKENS:
        section["max_new_tokens"] = context_length  # the spec's default would not fit
    if stop_tokens:
        section["stop_tokens"] = list(stop_tokens)
    return section, left_out
