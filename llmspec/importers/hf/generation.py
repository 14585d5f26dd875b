"""The spec's generation section from a Hugging Face generation_config.json.

Generation defaults come from ``generation_config.json`` where there is one (greedy,
sampling with temperature/top-k/top-p, beam search; repetition penalty and no-repeat-ngram
before the selector), else greedy. Settings the
spec's chain cannot express (``forced_eos_token_id``, a penalty together with beam search, ...)
are left out and listed in the spec's header comment: they are decoding defaults, not the
model. Models without an eos token get no generation section.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["generation_section"]


def generation_section(
    config: dict[str, Any], has_eos: bool
) -> tuple[dict[str, Any] | None, list[str]]:
    """The spec's generation section from generation_config.json, and what it left out."""
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
        steps = [
            {
                "type": "beam_search",
                "beams": beams,
                "length_penalty": config.get("length_penalty", 1.0),
                "early_stopping": early is True,
            }
        ]
    elif config.get("do_sample"):
        temperature = config.get("temperature")
        if temperature not in (None, 1, 1.0):
            steps.append({"type": "temperature", "value": temperature})
        top_k = config.get("top_k", 50)  # transformers' default when sampling
        if top_k:
            steps.append({"type": "top_k", "k": top_k})
        for key, kind in (("top_p", "top_p"), ("typical_p", "typical")):
            value = config.get(key)
            if value not in (None, 1, 1.0):
                steps.append({"type": kind, "p": value})
        if config.get("min_p"):
            steps.append({"type": "min_p", "p": config["min_p"]})
        steps.append({"type": "sample"})
    else:
        steps.append({"type": "greedy"})
    for key in ("forced_bos_token_id", "forced_eos_token_id", "bad_words_ids", "min_length"):
        if config.get(key) not in (None, 0, []):
            left_out.append(f"{key} = {json.dumps(config[key])}")
    section: dict[str, Any] = {"chain": steps}
    if isinstance(config.get("max_new_tokens"), int) and config["max_new_tokens"] > 0:
        section["max_new_tokens"] = config["max_new_tokens"]
    return section, left_out
