"""Loading an artifact and running it: ``runtime.load`` and one model class per family.

``load`` verifies the artifact (format version, every file's size and sha256), opens its graphs
on the chosen device (see :mod:`runtime.session`) and returns

* :class:`DecoderModel` (decoder-only) and :class:`Seq2SeqModel` (encoder-decoder), which
  ``generate``;
* :class:`EncoderModel` (encoder-only), which does ``fill_mask`` and ``embed``.

Tokenization conventions (the ones the training objectives use, see ``llmspec.trainer.objectives``):
a decoder-only prompt is the text's tokens as they are (no bos); encoder inputs (an
encoder-decoder prompt, a fill-mask or embedding text) are framed ``[bos] tokens [eos]``, each
where the vocabulary has it. A tokenizer.json whose post-processor adds special tokens (an
imported model's: BERT's ``[CLS] $A [SEP]``, Llama's ``<s> $A``, T5's ``$A </s>``) frames
every text its own way instead, as transformers' tokenizer does (see
:attr:`runtime.tokenizer.ArtifactTokenizer.frames_texts`). Prompts given as token ids are used
exactly as given.

Generation keeps a KV cache between steps: a decoder-only model runs its one graph once on the
left-padded prompts (past length 0) and then once per new token; an encoder-decoder model runs
its encoder once per request and feeds the encoder's cross-attention keys/values to every
decoder step, starting the decoder from the manifest's ``decoder_start`` token. Position ids
count each row's real tokens, so padding does not shift them; a finished row keeps feeding the
pad token, masked out, until the batch is done.

Every request is checked before a graph runs (:class:`RuntimeInputError`, a ValueError; bad
decoding chains raise :class:`runtime.decoding.DecodingError`, also a ValueError). A loaded
model is safe to share between threads: ONNX Runtime sessions run concurrently and each call
keeps its own state.

``generate`` checks and runs a request with the loop of :mod:`runtime.generation`, which drives
each family's graphs through :mod:`runtime.steppers`; what it returns is :mod:`runtime.results`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from runtime import artifact as fmt
from runtime.artifact import (
    ArtifactError,
    Manifest,
    check_graph_signature,
    read_chat_template,
    read_manifest,
    verify_files,
)
from runtime.decoding import BeamSearch, DecodingChain, DecodingError
from runtime.errors import RuntimeInputError
from runtime.generation import (
    Chain,
    GenerationConfigError,
    Prompts,
    Run,
    Stepper,
    checked_request,
    read_generation,
)
from runtime.graphs import DecoderGraph, EncoderGraph, Seq2SeqGraphs, right_padded
from runtime.logits import softmax
from runtime.results import GenerationResult, GenerationStream
from runtime.sampling import SamplerChain
from runtime.session import Graph, resolve_device, session_options
from runtime.steppers import DecoderStepper, Seq2SeqStepper
from runtime.structured import Constraint, constraint_for
from runtime.tokenizer import ArtifactTokenizer

POOLINGS = ("mean", "cls")


def load(
    path: str | Path,
    device: str = "auto",
    threads: int | None = None,
    *,
    require_signature: Any = None,
) -> DecoderModel | Seq2SeqModel | EncoderModel:
    """Open the artifact directory ``path`` and return the model for its family.

    The checks, cheapest first, all before a graph runs (see :mod:`runtime.artifact`): the
    signature when one is required; manifest.json (bounded, every field's type, the fields
    against the graph signatures it declares); the directory (exactly the listed files, no
    symlinks, every size and sha256); then, once ONNX Runtime has opened the graphs, their
    inputs and outputs against the manifest.

    Args:
        path: an artifact directory written by ``llmspec export``.
        device: ``"auto"`` (CUDA when it really works, else the CPU, with a one-time
            :class:`runtime.session.DeviceFallbackWarning` when an installed CUDA provider is
            not usable), ``"cuda"`` (or :class:`runtime.session.DeviceError`) or ``"cpu"``.
        threads: ONNX Runtime's intra-op threads (default: ONNX Runtime's choice, one per
            physical core).
        require_signature: a public key (a PEM file's path, PEM bytes or a ``cryptography``
            Ed25519 key); when given, the artifact must carry that key's signature of its
            manifest (``llmspec sign``), else :class:`ArtifactError`. Needs
            ``pip install 'llmspec[sign]'``; an unusable key raises
            :class:`runtime.signing.SigningError`.

    Raises :class:`ArtifactError` naming the file (and the field) for a missing, modified,
    unlisted, escaping or malformed artifact, one whose manifest disagrees with its graphs, a
    missing or invalid required signature, or one of another format version.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise ValueError(f"threads must be a whole number >= 1 or None, got {threads!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for ONNX Runtime's choice), got {threads}")
    root = Path(path)
    manifest = read_manifest(root, signed_by=require_signature)
    verify_files(root, manifest)
    resolved = resolve_device(device)
    if manifest.precision == "bf16" and resolved == "cpu":
        raise ArtifactError(
            f"{root / fmt.MANIFEST}: a bf16 artifact needs the CUDA provider (ONNX Runtime's CPU "
            "provider has no bf16 kernels); run it on a GPU or export fp16/fp32"
        )
    families: dict[str, type[_Model]] = {
        "decoder-only": DecoderModel,
        "encoder-decoder": Seq2SeqModel,
        "encoder-only": EncoderModel,
    }
    family = families[manifest.architecture]  # one of these: read_manifest checked it
    return family(root, manifest, resolved, threads)  # type: ignore[return-value]


class _Model:
    """What every family has: the manifest, the tokenizer and the graphs on a device."""

    graphs: tuple[str, ...] = ()

    def __init__(self, root: Path, manifest: Manifest, device: str, threads: int | None):
        self.path = root
        self.manifest = manifest
        self.device = device
        self.vocab_size = manifest.vocab_size
        self.context_length = manifest.context_length
        self.special_tokens = dict(manifest.special_tokens)
        self.tokenizer = ArtifactTokenizer.from_file(root / fmt.TOKENIZER)
        # the imported model's chat template (Jinja text; None without one): render it with
        # jinja2 or transformers, then pass the text to generate
        self.chat_template: str | None = read_chat_template(root, manifest)
        options = session_options(threads)
        self._graphs: dict[str, Graph] = {}
        for name in self.graphs:  # read_manifest checked that the manifest lists them
            try:
                graph = Graph(root / name, device, options)
            except Exception as err:
                if not type(err).__module__.startswith("onnxruntime"):
                    raise
                raise ArtifactError(f"{root / name}: ONNX Runtime cannot load it ({err})") from None
            session = graph.session
            check_graph_signature(
                root / name, manifest, session.get_inputs(), session.get_outputs()
            )
            self._graphs[name] = graph
        self.providers = self._graphs[self.graphs[0]].providers if self.graphs else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, device={self.device!r})"

    # -- tokens

    def _framed(self, ids: list[int]) -> list[int]:
        bos, eos = self.special_tokens.get("bos"), self.special_tokens.get("eos")
        return [*([bos] if bos is not None else []), *ids, *([eos] if eos is not None else [])]

    def _encoder_input(self, text: str, what: str) -> list[int]:
        """The ids of an encoder input: framed by the tokenizer's post-processor when it
        has one that adds tokens, else ``[bos] tokens [eos]``."""
        if self.tokenizer.frames_texts:
            return self.tokenizer.ids(text, what=what, add_special_tokens=True)
        return self._framed(self.encode(text, what))

    def encode(self, text: str, what: str = "text") -> list[int]:
        """The token ids of ``text`` (no special tokens added). Raises RuntimeInputError
        for text that is not valid Unicode (a lone surrogate), naming ``what`` and the
        position, and ArtifactError when the artifact's tokenizer fails on it (see
        :mod:`runtime.tokenizer`)."""
        return self.tokenizer.ids(text, what=what)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, without pad, bos and eos tokens (other specials are kept)."""
        hidden = self._hidden_ids()
        return self.tokenizer.decode([i for i in ids if i not in hidden], skip_special_tokens=False)

    def _hidden_ids(self) -> frozenset[int]:
        return frozenset(
            self.special_tokens[n] for n in ("pad", "bos", "eos") if n in self.special_tokens
        )

    def _decode_raw(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def pad_id(self) -> int:
        """The token that pads batches: pad, else eos, else 0 (always masked out)."""
        for name in ("pad", "eos"):
            if name in self.special_tokens:
                return self.special_tokens[name]
        return 0

    def _checked_ids(self, ids: Any, what: str) -> list[int]:
        """``ids`` as a list of ints, each in [0, vocab); raises RuntimeInputError."""
        try:
            array = np.asarray(ids)
        except (ValueError, TypeError, OverflowError):  # ragged or of odd objects
            array = np.asarray(None)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise RuntimeInputError(f"{what} must be a string or a list of integer token ids")
        if array.size == 0:
            raise RuntimeInputError(f"{what} is empty; give at least one token")
        bad = np.flatnonzero((array < 0) | (array >= self.vocab_size))
        if bad.size:
            position = int(bad[0])
            raise RuntimeInputError(
                f"{what}: token id {int(array[position])} at position {position} is outside "
                f"the vocabulary [0, {self.vocab_size})"
            )
        return [int(i) for i in array.tolist()]


# ----------------------------------------------------------------------------------------
# Decoder-only and encoder-decoder


class GenerativeModel(_Model):
    """generate() for decoder-only and encoder-decoder models."""

    def __init__(self, root: Path, manifest: Manifest, device: str, threads: int | None):
        try:  # before the graphs: it is cheap, and a bad one fails fast
            defaults = read_generation(
                root / fmt.GENERATION, manifest.context_length, manifest.vocab_size
            )
        except GenerationConfigError as err:
            raise ArtifactError(f"{err}; export the artifact again") from None
        self.max_new_tokens, self.chain = defaults.max_new_tokens, defaults.chain
        super().__init__(root, manifest, device, threads)
        eos = self.special_tokens.get("eos")
        # The tokens that end a row: generation.json's list, else (older artifacts) eos alone.
        self.stop_ids: frozenset[int] = frozenset(
            defaults.stop_token_ids
            if defaults.stop_token_ids is not None
            else ([eos] if eos is not None else [])
        )
        self._default_sampler = None if self._beam(self.chain) else SamplerChain(self.chain)

    def _hidden_ids(self) -> frozenset[int]:
        # stop tokens end a row's text as eos does, and are not part of it
        return super()._hidden_ids() | self.stop_ids

    @staticmethod
    def _beam(chain: DecodingChain) -> BeamSearch | None:
        step = chain.steps[0]
        return step if isinstance(step, BeamSearch) else None

    # -- what subclasses provide

    def _prompt_tokens(self, text: str, what: str = "prompt") -> list[int]:
        raise NotImplementedError

    def _check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        raise NotImplementedError

    def _prefixes(self, prompts: list[list[int]]) -> list[list[int]]:
        """What the decoding state sees as each row's sequence so far."""
        raise NotImplementedError

    def _stepper(self, prompts: list[list[int]], new_tokens: int) -> Stepper:
        """The request's stepper; ``new_tokens``: the most tokens it will generate per row
        (the room its cache is allocated with)."""
        raise NotImplementedError

    # -- the request

    def request_bytes(self, prompts: list[list[int]], max_new_tokens: int, beams: int) -> int:
        """A lower estimate of the memory a request takes: its KV cache at full length
        (``batch x beams`` rows, allocated once and written in place) and three ``[rows,
        vocab]`` float32 arrays of logits."""
        manifest = self.manifest
        element = 2 if manifest.precision in ("fp16", "bf16") else 4
        per_position = 2 * manifest.layers * manifest.kv_heads * manifest.head_dim * element
        rows = len(prompts) * beams
        positions = self._cache_positions(max(len(p) for p in prompts), max_new_tokens)
        return rows * (positions * per_position + 3 * self.vocab_size * 4)

    def _cache_positions(self, prompt_width: int, max_new_tokens: int) -> int:
        """The cached positions of one row at the end of a request."""
        raise NotImplementedError

    def _chain(self, chain: Chain | None) -> DecodingChain:
        return self.chain if chain is None else DecodingChain.coerce(chain)

    def constraint(
        self, *, json_schema: Any = None, regex: str | None = None, grammar: str | None = None
    ) -> Constraint:
        """Structured output for this model: exactly one of ``json_schema`` (a JSON Schema,
        a dict or its JSON text), ``regex`` (the whole output matches it) or ``grammar`` (a
        Lark grammar's text), compiled for this model's tokenizer and cached (see
        :mod:`runtime.structured`). Pass it to :meth:`generate` (``constraint=``) or to
        ``SamplerChain(chain, constraint=...)``. Raises :class:`RuntimeInputError` naming the
        argument and the reason for an invalid one, and for a model without an eos token.
        Needs ``pip install 'llmspec[structured]'``."""
        return constraint_for(self, json_schema=json_schema, regex=regex, grammar=grammar)

    @overload
    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int | None = None,
        chain: Chain | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: Literal[False] = False,
        *,
        logprobs: int | None = None,
        constraint: Constraint | None = None,
    ) -> GenerationResult: ...

    @overload
    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int | None = None,
        chain: Chain | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: Literal[True],
        logprobs: int | None = None,
        constraint: Constraint | None = None,
    ) -> GenerationStream: ...

    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int | None = None,
        chain: Chain | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        *,
        logprobs: int | None = None,
        constraint: Constraint | None = None,
    ) -> GenerationResult | GenerationStream:
        """Generate a continuation of each prompt.

        Args:
            prompts: a string, a list of token ids, or a list of strings / token-id lists (a
                batch, run together with left padding). Strings must be valid Unicode (no
                lone surrogates); bytes are refused: decode them with their encoding first.
            max_new_tokens: new tokens per prompt at most (default: ``generation.json``'s);
                prompt and new tokens must fit the context window.
            chain: a :class:`DecodingChain`, its compact form (``"temperature=0.7,top_k=50,
                sample"``), or a list of steps (configuration objects, their JSON dicts or
                compact strings, see :meth:`DecodingChain.coerce`); default:
                ``generation.json``'s. ``beam_search`` runs a beam search.
            seed: seeds the request's random generator; the same seed, prompts and chain give
                the same tokens. None: fresh entropy.
            stop: a string or strings; a row stops when its text contains one, and its text
                is cut before it. (With beam search: the best hypothesis is cut after the
                search.)
            stream: return a :class:`GenerationStream` of :class:`StreamEvent` s, produced as
                the tokens are; its ``result`` holds the whole result once exhausted.
            logprobs: None (default, no cost): none; ``k`` from 0 to 20 (OpenAI's bound):
                each generated token's :class:`runtime.results.TokenLogprob` with its ``k``
                most likely alternatives, in ``result.logprobs`` (one list per row, aligned
                with ``result.tokens``) and on each stream event. They are the model's raw
                log-probabilities (``log_softmax`` of the graph's logits, before the chain's
                processors and any constraint), as vLLM's default. With beam search: those of
                the best hypothesis' tokens, taken where each token was chosen.
            constraint: structured output, a :class:`runtime.structured.Constraint` from
                :meth:`constraint`: applied before the chain's processors, so every row that
                ends with eos is a complete match. Not with beam search.

        Returns a :class:`GenerationResult` (or a stream). Raises :class:`RuntimeInputError`
        or :class:`DecodingError` (both ValueErrors) for bad input, before any graph runs (a
        request whose KV cache cannot fit the machine's memory included, see
        :meth:`request_bytes`), and :class:`ArtifactError` when the artifact's tokenizer fails
        on a prompt (see :mod:`runtime.tokenizer`).

        Sampling note: the request has one seeded generator, drawn for every row at every step,
        so a row's samples depend on its place in the batch: a batch is reproducible, but a
        prompt sampled alone gets other tokens than in a batch. Greedy decoding and beam
        search give every row the tokens it gets alone.
        """
        request = checked_request(
            self, prompts, max_new_tokens, chain, seed, stop, stream, logprobs, constraint
        )
        run = Run(self, request)
        events = run.beam_events() if request.beam is not None else run.events()
        if stream:
            return GenerationStream(events, run.result)
        for _ in events:
            pass
        return run.result()


class DecoderModel(GenerativeModel):
    """A decoder-only model (GPT, Llama style): ``generate``."""

    graphs = (fmt.DECODER_GRAPH,)

    @property
    def feeder(self) -> DecoderGraph:
        """The decoder graph's feeder (:mod:`runtime.graphs`), for tools that run it on
        their own inputs (``llmspec eval``)."""
        return DecoderGraph.of(self._graphs[fmt.DECODER_GRAPH], self.manifest)

    def _prompt_tokens(self, text: str, what: str = "prompt") -> list[int]:
        # what the tokenizer's post-processor adds (Llama's bos), nothing without one
        return self.tokenizer.ids(text, what=what, add_special_tokens=True)

    def _check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        for row, prompt in enumerate(prompts):
            if len(prompt) + max_new_tokens > self.context_length:
                raise RuntimeInputError(
                    f"prompt {row} has {len(prompt)} tokens and max_new_tokens is "
                    f"{max_new_tokens}: {len(prompt) + max_new_tokens} is beyond the context "
                    f"window of {self.context_length}; shorten the prompt or lower "
                    "max_new_tokens"
                )

    def _prefixes(self, prompts: list[list[int]]) -> list[list[int]]:
        return prompts

    def _cache_positions(self, prompt_width: int, max_new_tokens: int) -> int:
        return prompt_width + max_new_tokens

    def _stepper(self, prompts: list[list[int]], new_tokens: int) -> Stepper:
        return DecoderStepper(self, prompts, new_tokens)


class Seq2SeqModel(GenerativeModel):
    """An encoder-decoder model (T5, BART style): ``generate``; the prompt is the encoder's
    input, framed ``[bos] tokens [eos]``, and the output is what the decoder writes."""

    graphs = (fmt.ENCODER_GRAPH, fmt.DECODER_GRAPH)  # special_tokens.decoder_start: checked

    @property
    def feeder(self) -> Seq2SeqGraphs:
        """The encoder and decoder graphs' feeder (:mod:`runtime.graphs`), for tools that run
        them on their own inputs (``llmspec eval``)."""
        return Seq2SeqGraphs.of(
            self._graphs[fmt.ENCODER_GRAPH], self._graphs[fmt.DECODER_GRAPH], self.manifest
        )

    def _prompt_tokens(self, text: str, what: str = "prompt") -> list[int]:
        return self._encoder_input(text, what)

    def _check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        for row, prompt in enumerate(prompts):
            if len(prompt) > self.context_length:
                raise RuntimeInputError(
                    f"prompt {row} has {len(prompt)} tokens, beyond the encoder's context "
                    f"window of {self.context_length}; shorten it"
                )
        if max_new_tokens > self.context_length:
            raise RuntimeInputError(
                f"max_new_tokens {max_new_tokens} is beyond the decoder's context window of "
                f"{self.context_length}; lower it"
            )

    def _prefixes(self, prompts: list[list[int]]) -> list[list[int]]:
        return [[self.special_tokens["decoder_start"]] for _ in prompts]

    def _cache_positions(self, prompt_width: int, max_new_tokens: int) -> int:
        # the decoder's own cache (decoder_start and the new tokens) and the cross-attention
        # keys/values of the source, which every beam row holds a copy of
        return 1 + max_new_tokens + prompt_width

    def _stepper(self, prompts: list[list[int]], new_tokens: int) -> Stepper:
        return Seq2SeqStepper(self, prompts, new_tokens)


# ----------------------------------------------------------------------------------------
# Encoder-only


@dataclass(frozen=True)
class MaskCandidate:
    """One way to fill the mask: the token's id and text, the input with the mask replaced
    by it, and the model's probability of it (softmax over the whole vocabulary)."""

    token_id: int
    token: str
    text: str
    probability: float


class EncoderModel(_Model):
    """An encoder-only model (BERT style): ``fill_mask`` and ``embed``. Texts are framed
    ``[bos] tokens [eos]`` (BERT's ``[CLS] ... [SEP]``)."""

    graphs = (fmt.ENCODER_GRAPH,)

    @property
    def feeder(self) -> EncoderGraph:
        """The encoder graph's feeder (:mod:`runtime.graphs`), for tools that run it on
        their own inputs (``llmspec eval``)."""
        return EncoderGraph(self._graphs[fmt.ENCODER_GRAPH])

    def token_ids(self, texts: str | Sequence[str]) -> list[list[int]]:
        """The token ids the encoder reads for each text (framed, checked against the context
        window): what ``fill_mask`` and ``embed`` run, and what a server counts as usage."""
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise RuntimeInputError("no texts given; pass a string or a list of them")
        result = []
        for row, text in enumerate(items):
            if not isinstance(text, str):
                raise RuntimeInputError(f"text {row} must be a string, got {type(text).__name__}")
            if not text:
                raise RuntimeInputError(f"text {row} is empty")
            ids = self._checked_ids(self._encoder_input(text, f"text {row}"), f"text {row}")
            if len(ids) > self.context_length:
                raise RuntimeInputError(
                    f"text {row} has {len(ids)} tokens (with its framing), beyond the context "
                    f"window of {self.context_length}; shorten it"
                )
            result.append(ids)
        return result

    def _run(self, rows: list[list[int]], output: str) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = right_padded(rows, self.pad_id)
        out = self.feeder.run(ids, mask, host=(output,))
        return np.asarray(out[output]), mask

    def fill_mask(self, text: str, top_k: int = 5) -> list[MaskCandidate]:
        """The ``top_k`` most likely tokens for the one mask token in ``text``, most likely
        first (ties: lowest id). The mask token is written as the tokenizer spells it (see
        ``mask_token``). Raises RuntimeInputError for a text without exactly one mask."""
        mask_id = self.special_tokens.get("mask")
        if mask_id is None:
            raise RuntimeInputError(
                f"{self.manifest.name} has no mask token, so it cannot fill masks"
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise RuntimeInputError(f"top_k must be a whole number >= 1, got {top_k!r}")
        (ids,) = self.token_ids(text)
        places = [i for i, token in enumerate(ids) if token == mask_id]
        if len(places) != 1:
            count = "no" if not places else str(len(places))
            raise RuntimeInputError(
                f"the text has {count} mask tokens; write exactly one {self.mask_token!r} where "
                "a token should be predicted"
            )
        logits, _ = self._run([ids], fmt.LOGITS)
        probabilities = softmax(logits[0, places[0]])
        top_k = min(top_k, len(probabilities))
        best = np.argpartition(-probabilities, top_k - 1)[:top_k]
        best = best[np.lexsort((best, -probabilities[best]))]
        candidates = []
        for token_id in best.tolist():
            token = self._decode_raw([token_id])
            candidates.append(
                MaskCandidate(
                    token_id=token_id,
                    token=token,
                    text=text.replace(self.mask_token, token, 1),
                    probability=float(probabilities[token_id]),
                )
            )
        return candidates

    @property
    def mask_token(self) -> str:
        """How the mask token is written in a text (e.g. ``[MASK]``)."""
        mask_id = self.special_tokens.get("mask")
        return "" if mask_id is None else str(self.tokenizer.id_to_token(mask_id) or "")

    def embed(
        self, texts: str | Sequence[str], pooling: str = "mean", normalize: bool = False
    ) -> np.ndarray:
        """One vector per text, ``[len(texts), d_model]`` float32, from the last hidden state.

        ``pooling="mean"`` averages the hidden states of the text's real tokens (its framing
        included, padding excluded, so a text embeds the same alone and in a batch);
        ``"cls"`` takes the first token's state (bos, BERT's ``[CLS]``). The vectors are not
        normalized unless ``normalize`` (then each has L2 norm 1, for cosine similarity)."""
        if pooling not in POOLINGS:
            raise RuntimeInputError(
                f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}"
            )
        if pooling == "cls" and "bos" not in self.special_tokens:
            raise RuntimeInputError(
                f"cls pooling takes the bos ([CLS]) token's state, and {self.manifest.name} has "
                "no bos token; use pooling='mean'"
            )
        rows = self.token_ids(texts)
        hidden, mask = self._run(rows, fmt.LAST_HIDDEN_STATE)
        hidden = hidden.astype(np.float32)
        if pooling == "cls":
            vectors = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        if normalize:
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)


__all__ = [
    "DecoderModel",
    "DecodingError",
    "EncoderModel",
    "MaskCandidate",
    "Seq2SeqModel",
    "load",
]
