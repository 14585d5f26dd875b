"""Loading an artifact and running it: ``runtime.load`` and one model class per family.

``load`` verifies the artifact (format version, every file's size and sha256), opens its graphs
on the chosen device (see :mod:`runtime.session`) and returns

* :class:`DecoderModel` (decoder-only) and :class:`Seq2SeqModel` (encoder-decoder), which
  ``generate``;
* :class:`EncoderModel` (encoder-only), which does ``fill_mask`` and ``embed``.

Tokenization conventions (the ones the training objectives use, see ``llmspec.trainer.objectives``):
a decoder-only prompt is the text's tokens as they are (no bos); encoder inputs (an
encoder-decoder prompt, a fill-mask or embedding text) are framed ``[bos] tokens [eos]``, each
where the vocabulary has it. Prompts given as token ids are used exactly as given.

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
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from runtime import artifact as fmt
from runtime.artifact import (
    ArtifactError,
    Manifest,
    check_graph_signature,
    read_manifest,
    verify_files,
)
from runtime.beam_search import BeamSearcher
from runtime.decoding import BeamSearch, DecodingChain, DecodingError
from runtime.generation import (
    FinishReason,
    GenerationConfigError,
    GenerationResult,
    GenerationStream,
    RowText,
    RuntimeInputError,
    StreamEvent,
    Timing,
    read_generation,
)
from runtime.graphs import (
    Cache,
    DecoderGraph,
    Encoded,
    EncoderGraph,
    Seq2SeqGraphs,
    left_padded,
    right_padded,
)
from runtime.memory import machine_memory
from runtime.sampling import SamplerChain, log_softmax, softmax
from runtime.session import Graph, resolve_device, session_options
from runtime.tokenizer import ArtifactTokenizer

Prompt = str | Sequence[int] | np.ndarray
Prompts = Prompt | Sequence[Prompt]
Chain = DecodingChain | str | Sequence[Any]

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
# Generation


@dataclass
class _Request:
    """One checked generate call."""

    prompts: list[list[int]]  # the token ids the model is fed (framed for encoder inputs)
    max_new_tokens: int
    sampler: SamplerChain | None  # None with beam search
    beam: BeamSearch | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool


class _Clock:
    """The loop's own time: paused while a streaming consumer holds the control."""

    def __init__(self) -> None:
        self.busy = 0.0
        self._mark = time.perf_counter()

    def pause(self) -> None:
        self.busy += time.perf_counter() - self._mark

    def resume(self) -> None:
        self._mark = time.perf_counter()

    def now(self) -> float:
        return self.busy + time.perf_counter() - self._mark


class _Stepper:
    """The model side of one request: runs the graphs and keeps the cache and the masks."""

    rows: int

    def first(self, beams: int) -> np.ndarray:
        """Run the prompt; ``[rows * beams, vocab]`` logits of the first new token, each
        prompt's row repeated ``beams`` times (beam ``j`` of prompt ``i`` is row
        ``i * beams + j``)."""
        raise NotImplementedError

    def next(self, tokens: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Feed one token per row (``alive`` False: the row is done, its token is masked)."""
        raise NotImplementedError

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` of the cache the old row ``rows[i]`` (beam search)."""
        raise NotImplementedError


class _GenerativeModel(_Model):
    """generate() for decoder-only and encoder-decoder models."""

    def __init__(self, root: Path, manifest: Manifest, device: str, threads: int | None):
        try:  # before the graphs: it is cheap, and a bad one fails fast
            self.max_new_tokens, self.chain = read_generation(
                root / fmt.GENERATION, manifest.context_length
            )
        except GenerationConfigError as err:
            raise ArtifactError(f"{err}; export the artifact again") from None
        super().__init__(root, manifest, device, threads)
        self._default_sampler = None if self._beam(self.chain) else SamplerChain(self.chain)

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

    def _stepper(self, prompts: list[list[int]]) -> _Stepper:
        raise NotImplementedError

    # -- the request

    def _prompt_list(self, prompts: Prompts) -> list[list[int]]:
        if isinstance(prompts, bytes | bytearray):
            raise RuntimeInputError("prompts must be a string or token ids, not bytes; decode them")
        if isinstance(prompts, str):
            items: list[Any] = [prompts]
        elif isinstance(prompts, np.ndarray):
            items = [prompts] if prompts.ndim == 1 else list(prompts)
        elif isinstance(prompts, Sequence):
            if len(prompts) == 0:
                raise RuntimeInputError("no prompts given; pass a string or a list of them")
            single = all(
                isinstance(p, int | np.integer) and not isinstance(p, bool) for p in prompts
            )
            items = [prompts] if single else list(prompts)
        else:
            raise RuntimeInputError(
                f"prompts must be a string, a list of token ids, or a list of those; "
                f"got {type(prompts).__name__}"
            )
        result = []
        for row, item in enumerate(items):
            what = f"prompt {row}"
            if isinstance(item, str):
                if not item:
                    raise RuntimeInputError(f"{what} is empty; give some text to continue")
                result.append(self._checked_ids(self._prompt_tokens(item, what), what))
            elif isinstance(item, bytes):
                raise RuntimeInputError(f"{what} is bytes; decode it to a str first")
            else:
                result.append(self._checked_ids(item, what))
        return result

    def _request(
        self,
        prompts: Prompts,
        max_new_tokens: int | None,
        chain: Chain | None,
        seed: int | None,
        stop: str | Sequence[str] | None,
        stream: bool,
    ) -> _Request:
        ids = self._prompt_list(prompts)
        default = max_new_tokens is None
        if max_new_tokens is None:
            max_new_tokens = self.max_new_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int | np.integer):
            raise RuntimeInputError(
                f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}"
            )
        if max_new_tokens < 0:
            raise RuntimeInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        try:
            self._check_lengths(ids, int(max_new_tokens))
        except RuntimeInputError as err:
            if not default:
                raise
            raise RuntimeInputError(
                f"{err} (max_new_tokens {max_new_tokens} is the artifact's default, from "
                "generation.json; pass max_new_tokens to choose another)"
            ) from None
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
        ):
            raise RuntimeInputError(f"seed must be a whole number >= 0 or None, got {seed!r}")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not isinstance(stop, list | tuple):
            raise RuntimeInputError(
                f"stop must be a string or a list of strings, got {type(stop).__name__}"
            )
        stops = tuple(stop or ())
        for text in stops:
            if not isinstance(text, str) or not text:
                raise RuntimeInputError(f"stop strings must be non-empty strings, got {text!r}")
        parsed = self._chain(chain)
        beam = self._beam(parsed)
        if beam is not None and stream:
            raise RuntimeInputError(
                "beam_search cannot stream: its best hypothesis is known only at the end; "
                "use stream=False or a sampling chain"
            )
        self._check_memory(ids, int(max_new_tokens), beam.beams if beam is not None else 1)
        sampler = None
        if beam is None:
            sampler = self._default_sampler if parsed is self.chain else SamplerChain(parsed)
        return _Request(ids, int(max_new_tokens), sampler, beam, seed, stops, stream)

    def request_bytes(self, prompts: list[list[int]], max_new_tokens: int, beams: int) -> int:
        """A lower estimate of the memory a request takes: its KV cache at full length
        (``batch x beams`` rows; twice, as each step's new cache is made while the old one
        lives) and three ``[rows, vocab]`` float32 arrays of logits."""
        manifest = self.manifest
        element = 2 if manifest.precision in ("fp16", "bf16") else 4
        per_position = 2 * manifest.layers * manifest.kv_heads * manifest.head_dim * element
        rows = len(prompts) * beams
        positions = self._cache_positions(max(len(p) for p in prompts), max_new_tokens)
        return rows * (2 * positions * per_position + 3 * self.vocab_size * 4)

    def _check_memory(self, prompts: list[list[int]], max_new_tokens: int, beams: int) -> None:
        """Refuse a request whose KV cache alone cannot fit the machine's memory."""
        memory = machine_memory()
        need = self.request_bytes(prompts, max_new_tokens, beams)
        if memory is None or need <= memory.total:
            return
        available = memory.total
        gib = 1 << 30
        raise RuntimeInputError(
            f"this request needs at least {need / gib:.1f} GiB for its KV cache and logits "
            f"({len(prompts)} prompts x {beams} beams, up to "
            f"{self._cache_positions(max(len(p) for p in prompts), max_new_tokens)} positions), "
            f"more than the {available / gib:.1f} GiB of memory of this machine; send fewer "
            "prompts at once, or lower beams or max_new_tokens"
        )

    def _cache_positions(self, prompt_width: int, max_new_tokens: int) -> int:
        """The cached positions of one row at the end of a request."""
        raise NotImplementedError

    def _chain(self, chain: Chain | None) -> DecodingChain:
        return self.chain if chain is None else DecodingChain.coerce(chain)

    @overload
    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int | None = None,
        chain: Chain | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: Literal[False] = False,
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
    ) -> GenerationStream: ...

    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int | None = None,
        chain: Chain | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
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
        request = self._request(prompts, max_new_tokens, chain, seed, stop, stream)
        run = _Run(self, request)
        events = run.beam_events() if request.beam is not None else run.events()
        if stream:
            return GenerationStream(events, run.result)
        for _ in events:
            pass
        return run.result()


class _Run:
    """The per-call state of one generate call."""

    def __init__(self, model: _GenerativeModel, request: _Request) -> None:
        self.model = model
        self.request = request
        rows = len(request.prompts)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.reasons: list[FinishReason] = ["length"] * rows
        self.texts: list[RowText] | None = None
        self.clock = _Clock()
        self.first_token = 0.0
        self.steps = 0
        self.eos = model.special_tokens.get("eos")

    def _row_text(self) -> RowText:
        return RowText(self.model._decode_raw, self.request.stop, self.model._hidden_ids())

    def events(self) -> Iterator[StreamEvent]:
        request, model = self.request, self.model
        if request.stream or request.stop:
            self.texts = [self._row_text() for _ in request.prompts]
        if request.max_new_tokens == 0:
            return
        assert request.sampler is not None
        state = request.sampler.start(
            model._prefixes(request.prompts),
            model.vocab_size,
            seed=request.seed,
            pad_id=model.pad_id,
        )
        stepper = model._stepper(request.prompts)
        logits = stepper.first(1)
        for step in range(request.max_new_tokens):
            tokens = request.sampler.select(logits, state)
            state.append(tokens)
            if step == 0:
                self.first_token = self.clock.now()
            self.steps = step + 1
            last = step == request.max_new_tokens - 1
            finished: list[int] = []
            events: list[StreamEvent] = []
            for row in np.flatnonzero(~state.finished).tolist():
                token = int(tokens[row])
                self.tokens[row].append(token)
                reason: FinishReason | None = None
                if token == self.eos:
                    reason = "eos"
                elif self.texts is not None:
                    self.texts[row].push(token)
                    if self.texts[row].stopped:
                        reason = "stop"
                if reason is None and last:
                    reason = "length"
                if reason is not None:
                    finished.append(row)
                    self.reasons[row] = reason
                if self.texts is not None and request.stream:
                    text = self.texts[row]
                    if reason is not None:
                        text.flush()
                    events.append(StreamEvent(row, token, text.release(reason is not None), reason))
            if finished:
                state.finish(np.asarray(finished, dtype=np.int64))
            if events:
                self.clock.pause()
                yield from events
                self.clock.resume()
            if state.finished.all() or last:
                break
            logits = stepper.next(tokens, ~state.finished)

    def beam_events(self) -> Iterator[StreamEvent]:
        request, model = self.request, self.model
        if request.max_new_tokens == 0:
            return
        assert request.beam is not None
        rows = len(request.prompts)
        searcher = BeamSearcher.from_config(
            request.beam, eos_id=self.eos, pad_id=model.pad_id, batch=rows
        )
        beams = searcher.beams
        stepper = model._stepper(request.prompts)
        logits = stepper.first(beams)
        identity = np.arange(rows * beams)
        for step in range(request.max_new_tokens):
            order, tokens = searcher.step(log_softmax(logits))
            if step == 0:
                self.first_token = self.clock.now()
            self.steps = step + 1
            if searcher.done or step == request.max_new_tokens - 1:
                break
            if not np.array_equal(order, identity):
                stepper.reorder(order)
            alive = np.repeat(~searcher.rows_done, beams)
            logits = stepper.next(tokens, alive)
        for row, best in enumerate(searcher.best()):
            self.tokens[row] = best
            self.reasons[row] = "eos" if best and best[-1] == self.eos else "length"
        yield from ()

    def result(self) -> GenerationResult:
        total = self.clock.now()
        texts = []
        for row, tokens in enumerate(self.tokens):
            if self.texts is not None:
                self.texts[row].flush()
                texts.append(self.texts[row].text)
                continue
            text = self.model.decode(tokens)
            if self.request.stop:  # beam search: cut the best hypothesis' text
                cut = [i for i in (text.find(s) for s in self.request.stop) if i >= 0]
                if cut:
                    text, self.reasons[row] = text[: min(cut)], "stop"
            texts.append(text)
        later = self.steps - 1
        timing = Timing(
            prefill_ms=1000 * self.first_token,
            per_token_ms=1000 * (total - self.first_token) / later if later > 0 else 0.0,
            total_ms=1000 * total,
            steps=self.steps,
        )
        return GenerationResult(
            texts=texts,
            tokens=self.tokens,
            finish_reasons=self.reasons,
            prompt_tokens=self.request.prompts,
            timing=timing,
        )


# A decoder-only prompt is run in chunks of at most this many tokens (over the batch), each
# chunk using the cache of the ones before it. The result is the same as one run, but the logits
# ([batch, chunk, vocabulary]) and attention scores of a long batched prompt never exist at once
# (at batch 8 x 1024 tokens x 32000 the logits alone would be 1 GiB of float32), and the smaller
# working set is faster too. Measured on the 124.7M Llama-style benchmark model (bench/peers.py,
# 2 CPU threads), time to first token / peak RSS: batch 1 x 1024 tokens 1063 ms / 756 MiB in one
# run, 827 ms / 659 MiB in chunks of 256; batch 8 x 1024 8.8 s / 2467 MiB in one run, 6.8 s /
# 1076 MiB in chunks of 256 (32 tokens per row: the weights are read once per chunk, which is
# what smaller chunks would pay for: 16 per row took 8.3 s).
PREFILL_CHUNK_TOKENS = 256


class _DecoderStepper(_Stepper):
    def __init__(self, model: DecoderModel, prompts: list[list[int]]) -> None:
        self.graph = model.feeder
        self.rows = len(prompts)
        self.ids, self.mask = left_padded(prompts, model.pad_id)
        self.cache: Cache = {}

    def first(self, beams: int) -> np.ndarray:
        """Prefill: the prompts in chunks of at most :data:`PREFILL_CHUNK_TOKENS` tokens over
        the batch, each chunk attending to the cache of the ones before it."""
        logits, self.cache = self.graph.prefill(self.ids, self.mask, PREFILL_CHUNK_TOKENS)
        if beams > 1:
            rows = np.repeat(np.arange(self.rows), beams)
            self.reorder(rows)
            logits = logits[rows]
        return logits

    def next(self, tokens: np.ndarray, alive: np.ndarray) -> np.ndarray:
        logits, self.mask, self.cache = self.graph.step(tokens, self.mask, self.cache, alive)
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        self.cache = self.graph.reorder(self.cache, rows)
        self.mask = self.mask[rows]


class DecoderModel(_GenerativeModel):
    """A decoder-only model (GPT, Llama style): ``generate``."""

    graphs = (fmt.DECODER_GRAPH,)

    @property
    def feeder(self) -> DecoderGraph:
        """The decoder graph's feeder (:mod:`runtime.graphs`), for tools that run it on
        their own inputs (``llmspec eval``)."""
        return DecoderGraph.of(self._graphs[fmt.DECODER_GRAPH], self.manifest)

    def _prompt_tokens(self, text: str, what: str = "prompt") -> list[int]:
        return self.encode(text, what)

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

    def _stepper(self, prompts: list[list[int]]) -> _Stepper:
        return _DecoderStepper(self, prompts)


class _Seq2SeqStepper(_Stepper):
    def __init__(self, model: Seq2SeqModel, prompts: list[list[int]]) -> None:
        self.graphs = model.feeder
        self.start = model.special_tokens["decoder_start"]
        self.rows = len(prompts)
        # Right padding: the encoder has no position ids, so real tokens start at position 0.
        self.source, self.source_mask = right_padded(prompts, model.pad_id)
        self.mask = np.ones((self.rows, 0), dtype=np.int64)
        self.cache: Cache = {}
        self.encoded: Encoded | None = None

    def first(self, beams: int) -> np.ndarray:
        encoded = self.graphs.encode(self.source, self.source_mask)
        rows = self.rows
        if beams > 1:
            encoded = self.graphs.reorder_encoded(encoded, np.repeat(np.arange(rows), beams))
            rows *= beams
        self.encoded = encoded
        self.mask = np.ones((rows, 1), dtype=np.int64)
        start = np.full((rows, 1), self.start, dtype=np.int64)
        logits, self.cache = self.graphs.decode(start, encoded, self.mask)
        return logits[:, -1, :]

    def next(self, tokens: np.ndarray, alive: np.ndarray) -> np.ndarray:
        assert self.encoded is not None  # first() ran
        logits, self.mask, self.cache = self.graphs.step(
            tokens, self.encoded, self.mask, self.cache, alive
        )
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        self.cache = self.graphs.reorder(self.cache, rows)
        self.mask = self.mask[rows]


class Seq2SeqModel(_GenerativeModel):
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
        return self._framed(self.encode(text, what))

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

    def _stepper(self, prompts: list[list[int]]) -> _Stepper:
        return _Seq2SeqStepper(self, prompts)


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

    def _texts(self, texts: str | Sequence[str]) -> list[list[int]]:
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise RuntimeInputError("no texts given; pass a string or a list of them")
        result = []
        for row, text in enumerate(items):
            if not isinstance(text, str):
                raise RuntimeInputError(f"text {row} must be a string, got {type(text).__name__}")
            if not text:
                raise RuntimeInputError(f"text {row} is empty")
            ids = self._checked_ids(self._framed(self.encode(text, f"text {row}")), f"text {row}")
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
        (ids,) = self._texts(text)
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
        rows = self._texts(texts)
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
