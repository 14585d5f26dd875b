"""The imported model's special tokens and tokenizer: the source's tokenizer.json, or a placeholder.

The token ids the model was trained with are the truth, so each special token keeps its
source id:

- with a ``tokenizer.json`` in HF_DIR, it is copied and the spec names it
  (``tokenizer: {type: file, path: tokenizer.json}``). Special tokens are the tokens at the
  config's ``pad/bos/eos/unk/mask_token_id``; roles the config lacks (BERT's mask, T5's unk,
  BART's mask) come from ``special_tokens_map.json`` or ``tokenizer_config.json``
  (BERT's ``cls_token``/``sep_token`` stand for bos/eos). T5 sentinels are the
  ``<extra_id_N>`` tokens the tokenizer has.
- without one, the source has no text mapping at all, so the import gets a byte-level
  tokenizer whose special tokens sit at the config's ids: the built-in ``byte-level``
  tokenizer when its fixed layout (see :mod:`llmspec.tokenizer`) already puts them there (T5:
  pad 0, eos 1, sentinels at the top), otherwise a placeholder ``tokenizer.json`` built
  the same way (the 256 bytes on the lowest free ids in byte order, the rest unused). Roles
  the objective needs but the config does not name (a mask token) take the highest free
  id, as BART's ``<mask>`` does; T5 gets 100 sentinels ``<extra_id_N>`` descending from the
  top id, or as many as fit beside the 256 bytes. Text through a placeholder is not the
  source model's text; padding, eos and sentinels address the same embedding rows.

The copied tokenizer.json is made to encode and decode as transformers' fast tokenizer does
with the directory's files (:func:`as_transformers_loads`), rewritten only where it must be:

- its ``padding`` and ``truncation`` are removed (transformers turns both off for every call
  that does not ask for them; a sentence-transformers file pads every text to 128 tokens). The
  runtime turns them off too, for artifacts imported before;
- its post-processor stays: it is what frames texts (the runtime uses it, see
  :mod:`runtime.model`), and transformers 5 ignores tokenizer_config.json's ``add_bos_token``
  / ``add_eos_token`` when a tokenizer.json exists;
- a special token that tokenizer_config.json or special_tokens_map.json names (the roles,
  ``additional_special_tokens``, ``extra_special_tokens``) becomes a special added token of the
  file when it is in its vocabulary but not added yet, as transformers adds it (its text is
  then never split, and decoding may skip it); one the vocabulary lacks, which transformers
  would append as a new id, is left out, and the spec's header notes it;
- ``clean_up_tokenization_spaces: true`` in tokenizer_config.json, for a model other than BPE
  (transformers 5 ignores it for BPE), appends to the decoder the same replacements (``" ."``
  to ``"."``, ``" n't"`` to ``"n't"``, ...) on the whole decoded text, so the artifact decodes
  as transformers does without a setting of its own. A tool writing the files back for
  transformers (export-hf) must then say ``clean_up_tokenization_spaces: false``.

Either way the written tokenizer is checked against the spec (:func:`check_tokenizer`, by
:func:`llmspec.tokenizer.check_fits`) and every special token must come out at the id the
config gives it.

Roles sharing one id (Llama configs that pad with eos) keep the first of eos, bos, pad, unk,
mask (bos and eos may share a token), noted in the spec's header comment. An ``eos_token_id``
list (Llama 3.1's ``[128001, 128008, 128009]``) keeps its first id as eos; the others (from
generation_config.json where it has the key) are the tokens of ``generation.stop_tokens``
(their texts in tokenizer.json, which must have them; ``<stop_ID>`` in a placeholder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from llmspec.importers.hf.mapping import HFImportError
from llmspec.importers.hf.source import MAX_JSON_BYTES, TOKENIZER_FILE, Source
from llmspec.importers.hf.translation import Imported
from llmspec.spec.sections import BYTE_LEVEL_BASE, ModelSpec
from llmspec.tokenizer import (
    MAX_TOKENIZER_BYTES,
    TokenizerMismatch,
    byte_alphabet,
    byte_level,
    check_fits,
    read_tokenizer_text,
)
from runtime import artifact as fmt
from runtime.reading import UnreadableFile, read_json, read_text

__all__ = [
    "Vocabulary",
    "as_transformers_loads",
    "check_tokenizer",
    "decoder_start_role",
    "placeholder_vocabulary",
    "vocabulary_from_tokenizer",
]

ROLE_ORDER = ("eos", "bos", "pad", "unk", "mask")  # who keeps an id that several roles share
T5_SENTINELS = 100

# Texts for placeholder special tokens, in the naming each family's own tokenizer uses.
PLACEHOLDER_TEXTS: dict[str, dict[str, str]] = {
    "bert": {"pad": "[PAD]", "bos": "[CLS]", "eos": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
    "gpt2": {
        "pad": "<pad>",
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "unk": "<unk>",
        "mask": "<mask>",
    },
}
DEFAULT_TEXTS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


@dataclass
class Vocabulary:
    """The settled special tokens: what the spec says, the tokenizer to write, the ids to keep."""

    section: dict[str, Any]  # the spec's vocabulary section
    tokenizer_json: str | None  # text of a tokenizer.json to write, if any
    ids: dict[str, int]  # role -> the id its token must have
    notes: list[str]
    stop_tokens: list[str] = field(default_factory=list)  # texts of the stop ids besides eos


def _stop_ids(imported: Imported, ids: dict[str, int], size: int) -> list[int]:
    """The ids besides eos that end generation (Llama 3's <|eot_id|>, <|eom_id|>), each
    within the vocabulary."""
    stops = [i for i in imported.stop_ids if i != ids.get("eos")]
    for token_id in stops:
        if token_id >= size:
            raise HFImportError(
                f"generation_config.json / config.json: eos_token_id {token_id} is beyond "
                f"vocab_size {size}"
            )
    return stops


def _dedupe_roles(ids: dict[str, int], notes: list[str]) -> dict[str, int]:
    """One role per id, except that bos and eos may share; the first of ROLE_ORDER wins."""
    kept: dict[str, int] = {}
    for role in ROLE_ORDER:
        if role not in ids:
            continue
        owner = next((r for r, i in kept.items() if i == ids[role]), None)
        if owner is not None and {owner, role} != {"bos", "eos"}:
            notes.append(f"{role} shares id {ids[role]} with {owner}; the spec has no {role} token")
            continue
        kept[role] = ids[role]
    return kept


def vocabulary_from_tokenizer(source: Source, imported: Imported, size: int) -> Vocabulary:
    """The vocabulary of the source's tokenizer.json, copied (see the module docstring)."""
    assert source.tokenizer_json is not None
    try:
        json_text = read_text(source.tokenizer_json, MAX_TOKENIZER_BYTES, fmt.TOKENIZER)
    except UnreadableFile as err:
        raise HFImportError(str(err)) from None
    try:
        tokenizer = read_tokenizer_text(json_text, source.tokenizer_json)
    except TokenizerMismatch as err:
        raise HFImportError(str(err)) from None
    notes: list[str] = []
    json_text, tokenizer = as_transformers_loads(
        json_text, tokenizer, source.tokenizer_json.parent / TOKENIZER_CONFIG, notes
    )
    ids = dict(imported.token_ids)
    names = dict(source.token_names)
    for role, stand_in in (("bos", "cls"), ("eos", "sep")):  # BERT's [CLS] and [SEP]
        if role not in names and stand_in in names:
            names[role] = names[stand_in]
    for role in ROLE_ORDER:
        if role in ids or not names.get(role):
            continue
        token_id = tokenizer.token_to_id(names[role])
        if token_id is not None:
            ids[role] = token_id
    ids = _dedupe_roles(ids, notes)
    texts: dict[str, str] = {}
    for role, token_id in ids.items():
        text = tokenizer.id_to_token(token_id)
        if text is None:
            raise HFImportError(
                f"config.json: {role}_token_id {token_id} is not a token of {source.tokenizer_json}"
            )
        if token_id >= size:
            raise HFImportError(
                f"config.json: {role}_token_id {token_id} is beyond vocab_size {size}"
            )
        texts[role] = text
    missing = [role for role in imported.needs if role not in texts]
    if missing:
        raise HFImportError(
            f"{imported.spec['objective']['type']} needs a {missing[0]} token, but neither "
            "config.json nor the tokenizer files name one"
        )
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if largest >= size:
        raise HFImportError(
            f"{source.tokenizer_json} has ids up to {largest}, beyond the model's vocab_size {size}"
        )
    sentinels = 0
    if imported.sentinels:
        while tokenizer.token_to_id(f"<extra_id_{sentinels}>") is not None:
            sentinels += 1
    section: dict[str, Any] = {
        "size": size,
        "tokenizer": {"type": "file", "path": TOKENIZER_FILE},
        "special_tokens": texts,
    }
    if sentinels:
        section["sentinels"] = sentinels
    stop_tokens = []
    for token_id in _stop_ids(imported, ids, size):
        text = tokenizer.id_to_token(token_id)
        if text is None:
            raise HFImportError(
                f"generation_config.json / config.json: eos_token_id {token_id} is not a token "
                f"of {source.tokenizer_json}; every id that ends generation must be one of its "
                "tokens (fix eos_token_id or the tokenizer)"
            )
        stop_tokens.append(text)
    return Vocabulary(section, json_text, ids, notes, stop_tokens)


TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order
SPECIAL_ROLES = tuple(
    f"{role}_token" for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
)
# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order
CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def as_transformers_loads(
    json_text: str, tokenizer: Tokenizer, config_path: Path, notes: list[str]
) -> tuple[str, Tokenizer]:
    """``json_text`` (and its parsed ``tokenizer``), rewritten to encode and decode as
    transformers loads it beside ``config_path`` (see the module docstring); the text is
    kept byte for byte when nothing needs rewriting."""
    config = _json_object(config_path)
    changed: list[str] = []
    named = _named_special_tokens(config, _json_object(config_path.with_name(SPECIAL_TOKENS_MAP)))
    added = {str(token.content) for token in tokenizer.get_added_tokens_decoder().values()}
    missing = [token for token in named if token.content not in added]
    for token in missing:
        if tokenizer.token_to_id(token.content) is None:
            notes.append(
                f"transformers would add the special token {token.content!r} (named in "
                f"{config_path.name} or {SPECIAL_TOKENS_MAP}) as a new id; tokenizer.json has no "
                "such token, so the import leaves it out"
            )
            continue
        tokenizer.add_special_tokens([token])
        changed.append(f"{token.content!r} is a special token, as those files name it")
    if tokenizer.padding is not None or tokenizer.truncation is not None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        changed.append("its padding and truncation are removed (the runtime pads batches)")
    model_type = type(tokenizer.model).__name__
    if config.get("clean_up_tokenization_spaces") is True and model_type != "BPE":
        if tokenizer.decoder is None:
            raise HFImportError(
                f"{config_path}: clean_up_tokenization_spaces is true but tokenizer.json has no "
                "decoder; llmspec cannot express that clean-up; set it to false or add a decoder"
            )
        cleanup = [decoders.Replace(old, new) for old, new in CLEAN_UP]
        tokenizer.decoder = decoders.Sequence([tokenizer.decoder, decoders.Fuse(), *cleanup])
        changed.append(
            "its decoder ends with transformers' clean_up_tokenization_spaces replacements"
        )
    if not changed:
        return json_text, tokenizer
    notes.append("tokenizer.json as transformers loads it: " + "; ".join(changed))
    return str(tokenizer.to_str(pretty=True)), tokenizer


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or {} when there is no such file."""
    if not path.is_file():
        return {}
    try:
        loaded = read_json(path, MAX_JSON_BYTES, path.name)
    except UnreadableFile as err:
        raise HFImportError(str(err)) from None
    if not isinstance(loaded, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    return loaded


def _added_token(value: object) -> AddedToken | None:
    """A special token as the tokenizer files write it (a string or an AddedToken's dict), as
    transformers adds it: special, not normalized unless the dict says so."""
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if not isinstance(value, dict) or not isinstance(value.get("content"), str):
        return None
    flags = {k: bool(value[k]) for k in ("lstrip", "rstrip", "single_word") if k in value}
    normalized = bool(value.get("normalized", False))
    return AddedToken(value["content"], special=True, normalized=normalized, **flags)


def _named_special_tokens(config: dict[str, Any], special_map: dict[str, Any]) -> list[AddedToken]:
    """The special tokens transformers 5 adds to a tokenizer.json's: the roles of
    tokenizer_config.json (special_tokens_map.json's instead when the config has no
    ``added_tokens_decoder``), then the extra / additional special tokens."""
    merged = dict(config)
    if "added_tokens_decoder" not in config:
        merged.update(special_map)
    values: list[object] = [merged.get(role) for role in SPECIAL_ROLES]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = merged.get(key)
        if isinstance(extra, list):
            values += extra
    tokens: dict[str, AddedToken] = {}
    for value in values:
        token = _added_token(value)
        if token is not None and token.content:
            tokens.setdefault(token.content, token)
    return list(tokens.values())


def placeholder_vocabulary(family: str, imported: Imported, size: int) -> Vocabulary:
    """Byte-level vocabulary keeping the source's special ids (see the module docstring)."""
    notes: list[str] = []
    ids = _dedupe_roles(dict(imported.token_ids), notes)
    for role, token_id in ids.items():
        if token_id >= size:
            raise HFImportError(
                f"config.json: {role}_token_id = {token_id} is beyond vocab_size {size}"
            )
    names = PLACEHOLDER_TEXTS.get(family, DEFAULT_TEXTS)
    texts = {role: names[role] for role in ids}
    if "bos" in ids and ids.get("bos") == ids.get("eos"):
        texts["bos"] = texts["eos"]
    taken: dict[int, str] = {token_id: texts[role] for role, token_id in ids.items()}
    stops = _stop_ids(imported, ids, size)
    for token_id in stops:  # the placeholder names the other ids that end generation
        taken.setdefault(token_id, f"<stop_{token_id}>")
    stop_tokens = [taken[token_id] for token_id in stops]
    top = [i for i in range(size - 1, -1, -1) if i not in taken]
    unnamed = [role for role in imported.needs if role not in texts]
    room = len(top) - len(unnamed) - BYTE_LEVEL_BASE
    sentinels = max(0, min(T5_SENTINELS, room)) if imported.sentinels else 0
    for index in range(sentinels):
        taken[top[index]] = f"<extra_id_{index}>"
    top = top[sentinels:]
    for role in imported.needs:
        if role not in texts:  # e.g. BERT's and BART's mask: configs have no id for it
            texts[role] = names[role]
            ids[role] = top.pop(0)
            taken[ids[role]] = texts[role]
            notes.append(f"{role} has no id in config.json; the placeholder puts it at the top")
    free = sorted(i for i in range(size) if i not in taken)
    if len(free) < BYTE_LEVEL_BASE:
        raise HFImportError(
            f"config.json: vocab_size = {size} is too small for a byte-level tokenizer "
            f"({BYTE_LEVEL_BASE} bytes + {len(taken)} special tokens); put the model's "
            "tokenizer.json in the directory"
        )
    section: dict[str, Any] = {"size": size, "special_tokens": texts}
    if sentinels:
        section["sentinels"] = sentinels
    # The built-in byte-level layout: distinct specials first (pad, bos, eos, unk, mask), then
    # bytes, sentinels descending from the top. Use it when it puts every token where it is.
    order = [texts[r] for r in ("pad", "bos", "eos", "unk", "mask") if r in texts]
    distinct = list(dict.fromkeys(order))
    builtin = {i: text for i, text in enumerate(distinct)}
    builtin.update({size - 1 - k: f"<extra_id_{k}>" for k in range(sentinels)})
    if builtin == taken:
        section["tokenizer"] = {"type": "byte-level"}
        return Vocabulary(section, None, ids, notes, stop_tokens)
    section["tokenizer"] = {"type": "file", "path": TOKENIZER_FILE}
    notes.append(
        "the source has no tokenizer.json: tokenizer.json is a byte-level placeholder that keeps "
        "the model's special-token ids"
    )
    tokenizer_json = _placeholder_tokenizer(taken, free, size)
    return Vocabulary(section, tokenizer_json, ids, notes, stop_tokens)


def _placeholder_tokenizer(special: dict[int, str], free: list[int], size: int) -> str:
    vocab: dict[str, int] = {text: token_id for token_id, text in special.items()}
    for symbol, token_id in zip(byte_alphabet(), free, strict=False):
        vocab[symbol] = token_id
    for token_id in free[BYTE_LEVEL_BASE:]:
        vocab[f"<unused_{token_id}>"] = token_id
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(text, special=True) for _, text in sorted(special.items())]
    )
    if tokenizer.get_vocab_size(with_added_tokens=True) != size:
        raise AssertionError("placeholder tokenizer does not cover the vocabulary")
    return str(tokenizer.to_str(pretty=True))


def check_tokenizer(spec: ModelSpec, vocabulary: Vocabulary) -> None:
    """The tokenizer the import writes must fit the spec and keep the source's special ids."""
    if vocabulary.tokenizer_json is None:
        tokenizer = byte_level(spec)
    else:
        tokenizer = Tokenizer.from_str(vocabulary.tokenizer_json)
    try:
        ids = check_fits(tokenizer, spec)
    except TokenizerMismatch as err:
        raise HFImportError(str(err)) from None
    moved = {role: (ids[role], i) for role, i in vocabulary.ids.items() if ids.get(role) != i}
    if moved:
        role, (found, wanted) = next(iter(moved.items()))
        raise HFImportError(
            f"the tokenizer gives the {role} token id {found}, but config.json says {wanted}"
        )


def decoder_start_role(start: object, vocabulary: Vocabulary) -> str:
    """The special-token role (pad, bos or eos) whose id is the config's decoder start."""
    for role in ("pad", "bos", "eos"):
        if vocabulary.ids.get(role) == start:
            return role
    raise HFImportError(
        f"decoder_start_token_id = {start} is not the pad, bos or eos token "
        f"(ids: {dict(sorted(vocabulary.ids.items()))}); llmspec starts decoding from one of those"
    )
