"""Instruction fine-tuning with LoRA: ``llmspec finetune`` and :func:`finetune`::

    import llmspec

    run = llmspec.finetune("runs/tiny", ["train.jsonl"], "runs/tiny-chat",
                           lora="r=16,alpha=32,targets=q_proj,v_proj", steps=200)

The model to adapt is a spec file (fresh seeded weights, mostly for tests), a run directory of
``llmspec train`` or ``llmspec finetune``, or an ``llmspec import-hf`` directory; it must be
generative (decoder-only or encoder-decoder). The data are JSONL instruction files
(:mod:`llmspec.trainer.instructions`: records, templates, the loss on response tokens only, no
packing); a seeded 5 % of the examples (at most 64) is held out for the evaluation loss, or
``eval_data`` gives the held-out examples.

What a run does:

* **The model.** The base weights are frozen; LoRA adapters (:mod:`llmspec.trainer.lora`, with
  Hugging Face PEFT) on the targeted linear layers are the only parameters trained, with AdamW
  (betas 0.9/0.95, no weight decay), a linear warmup and a cosine decay to a tenth of ``lr``,
  gradients clipped to norm 1.
* **Fitting.** ``accumulate`` micro-batches per optimizer step (``batch_size`` is the global
  batch: it is split over the processes and then into ``accumulate`` micro-batches; each
  micro-batch's mean loss is weighted by its share of the step's response tokens, so the
  gradient is the mean over the step's response tokens however it is split).
  ``checkpointing`` recomputes each layer in the backward pass instead of keeping its
  activations (``torch.utils.checkpoint``, non-reentrant; only the layers' inputs are kept).
  ``bf16`` runs the forward under bf16 autocast (CPU and CUDA; the weights and the adapter stay
  fp32); a bf16 spec does so anyway, an fp16 spec as :func:`llmspec.trainer.loop.train` does.
  ``llmspec estimate SPEC --finetune lora`` predicts the memory of a step.
* **Order.** Step ``s`` takes the examples ``s * batch_size ...`` of the endless sequence of
  seeded epochs (:func:`~llmspec.trainer.instructions.epoch_order`), dropout is seeded by
  ``(seed, step, rank)``: a run resumes exactly, on any number of processes.
* **Distribution.** Under torchrun with ``strategy`` ``ddp`` or ``fsdp``, as pre-training
  (:mod:`llmspec.trainer.cluster`): the frozen weights are sharded by FSDP2 along with the
  adapters.

The run directory::

    spec.yaml, tokenizer.json   as the base model's (chat_template.jinja too, when it has one)
    weights.safetensors         the base weights with the adapter merged in: the directory is an
                                ordinary model directory, so ``llmspec export RUN_DIR`` writes an
                                ordinary artifact (parity gate and all) that runs at full speed
                                with no runtime change, and ``llmspec train`` / ``finetune``
                                can start from it
    adapter/adapter_model.safetensors, adapter/adapter_config.json
                                the adapter alone (PEFT's format and names: small)
    run.json                    settings, LoRA settings, the base (its path and the sha256 of
                                its weights), the template used (plain, spec or
                                chat_template.jinja), a digest of the examples
    metrics.jsonl, loss.png     as pre-training's; the first eval_loss (step 0) is the base
                                model's held-out loss on the response tokens
    checkpoints/step-NNNNNNNN/  weights.safetensors holds the adapter only; optimizer.pt and
                                state.json as pre-training's

``resume`` continues from the newest checkpoint with the run's settings; the base must still be
where run.json says, with the same weights.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmspec.estimates.finetune import lora_memory
from llmspec.estimates.memory import build_bytes
from llmspec.files import remove_stale, write_atomic, writing
from llmspec.spec.loading import dump_spec, spec_sha256
from llmspec.spec.sections import ModelSpec
from llmspec.trainer.checkpoints import (
    CHECKPOINTS,
    METRICS_FILE,
    RUN_FILE,
    SPEC_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    RunWriter,
    Source,
    checkpoint_dirs,
    load_checkpoint,
    run_source,
    save_checkpoint,
    state_dicts,
    stored_spec,
    weights_bytes,
)
from llmspec.trainer.cluster import Cluster, wrap_model
from llmspec.trainer.instructions import (
    CHAT_TEMPLATE_FILE,
    PLAIN_PROMPT,
    ChatTemplate,
    Renderer,
    collate,
    epoch_order,
    jsonl_files,
    read_conversations,
    response_tokens,
    split_held_out,
)
from llmspec.trainer.lora import (
    ADAPTER_DIR,
    LoraSettings,
    adapter_only,
    apply_lora,
    load_adapter,
    merged_weights,
    parse_lora,
    save_adapter,
)
from llmspec.trainer.objectives import Features, TokenIds, to_torch
from llmspec.trainer.optimization import BETAS, GRAD_CLIP, Precision, lr_factor, precision_for
from llmspec.trainer.progress import Progress, human_number, read_metrics
from llmspec.trainer.settings import TrainError, run_settings, step_seed
from runtime.artifact import sha256_of

BASE_SPEC = "base.yaml"


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tuning run is trained with; stored in run.json, fixed for the run."""

    steps: int = 200
    batch_size: int = 8  # global: examples per optimizer step over all processes
    accumulate: int = 1  # micro-batches per optimizer step on each process
    seq_len: int = 0  # 0: the spec's context_length
    lr: float = 3e-4
    warmup: int = -1  # -1: a tenth of the steps, at most 100
    eval_every: int = 50
    checkpoint_every: int = 100
    seed: int = 0
    checkpointing: bool = False
    bf16: bool = False

    def resolved(self, spec: ModelSpec) -> FinetuneSettings:
        seq_len = self.seq_len or spec.context_length
        warmup = self.warmup if self.warmup >= 0 else min(100, self.steps // 10)
        return replace(self, seq_len=seq_len, warmup=warmup)

    def problems(self, spec: ModelSpec, world: int) -> list[str]:
        out = []
        for name in ("steps", "batch_size", "accumulate", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            out.append(f"seq_len must be at least 2, got {self.seq_len}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            out.append(f"lr must be a positive number, got {self.lr}")
        for name in ("warmup", "seed"):
            if getattr(self, name) < 0:
                out.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.seq_len > spec.context_length:
            out.append(
                f"seq_len {self.seq_len} exceeds the spec's context_length "
                f"{spec.context_length}; lower --seq-len"
            )
        parts = world * self.accumulate
        if self.batch_size >= 1 and self.accumulate >= 1 and self.batch_size % parts:
            out.append(
                f"batch_size {self.batch_size} must be a multiple of {world} process(es) x "
                f"{self.accumulate} micro-batch(es) (--accumulate)"
            )
        return out


# ----------------------------------------------------------------------------------------
# The run


def finetune(
    model: ModelSpec | str | os.PathLike[str],
    data: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    lora: LoraSettings | str | None = None,
    eval_data: Sequence[str | os.PathLike[str]] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    accumulate: int | None = None,
    seq_len: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    seed: int | None = None,
    checkpointing: bool | None = None,
    bf16: bool | None = None,
    resume: bool = False,
    strategy: str | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune a generative model with LoRA on instruction data; return the run directory.

    Args:
        model: a spec (file or object), or a directory with spec.yaml and weights.safetensors
            (a run of ``llmspec train`` / ``finetune``, an ``llmspec import-hf`` output).
        data: JSONL instruction files (see :mod:`llmspec.trainer.instructions`).
        out_dir: the run directory; it must not exist yet (or be empty), unless ``resume``.
        lora: :class:`LoraSettings` or its text ``r=16,alpha=32,targets=q_proj,v_proj``
            (default: the spec's ``finetune.lora``, else r=8, alpha=16, targets q_proj,
            v_proj).
        eval_data: JSONL files of held-out examples (default: 5 % of ``data``'s).
        steps, batch_size, accumulate, seq_len, lr, warmup, eval_every, checkpoint_every,
            seed, checkpointing, bf16: see :class:`FinetuneSettings` and the module docstring.
        resume: continue the run in ``out_dir`` from its newest checkpoint, with its settings.
        strategy: None (one process), "ddp" or "fsdp" (under torchrun, or as a group of one).
        progress: print the progress line on stderr.

    Raises :class:`TrainError` (and :class:`llmspec.SpecError`,
    :class:`llmspec.tokenizer.TokenizerMismatch`, :class:`llmspec.builder.WeightsError`) for
    inputs that cannot be used, before any step runs.
    """
    given = {
        "steps": steps,
        "batch_size": batch_size,
        "accumulate": accumulate,
        "seq_len": seq_len,
        "lr": lr,
        "warmup": warmup,
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        "seed": seed,
        "checkpointing": checkpointing,
        "bf16": bf16,
    }
    adapter = parse_lora(lora) if isinstance(lora, str) else lora
    cluster = Cluster.start(strategy)
    try:
        run = _Finetune(cluster, Path(out_dir), progress and cluster.main)
        failure: Exception | None = None
        setup = None
        try:
            setup = run.setup(model, data, eval_data, given, adapter, resume)
        except Exception as err:  # raised below, once every process knows
            failure = err
        if not cluster.all_ok(failure is None) or setup is None:
            raise failure or TrainError("another process could not start the run; see its error")
        out = run.train(setup)
        cluster.barrier()
        return out
    finally:
        cluster.close()


@dataclass
class _Setup:
    source: Source
    source_dir: Path | None  # the model directory (its chat template), None for a spec
    settings: FinetuneSettings
    lora: LoraSettings
    checkpoint: Path | None
    record: dict[str, Any]
    train: list[Features]
    held_out: list[Features]
    pad_id: int
    encoder_decoder: bool
    base_spec: ModelSpec | None = None  # a spec object given as the model, stored as base.yaml


class _Finetune(RunWriter):
    # Preparing -----------------------------------------------------------------------

    def setup(
        self,
        model: ModelSpec | str | os.PathLike[str],
        data: Sequence[str | os.PathLike[str]],
        eval_data: Sequence[str | os.PathLike[str]] | None,
        given: dict[str, Any],
        lora: LoraSettings | None,
        resume: bool,
    ) -> _Setup:
        from llmspec.builder import check_memory

        record_path = self.dir / RUN_FILE
        checkpoint = None
        if resume and record_path.is_file():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("kind") != "finetune":
                raise TrainError(
                    f"{self.dir} is not a fine-tuning run; resume it with llmspec train"
                )
            saved_lora = LoraSettings.from_json(record["lora"])
            if lora is not None and lora != saved_lora:
                raise TrainError(
                    f"--resume continues a run with its own --lora ({saved_lora}); omit --lora"
                )
            lora = saved_lora
            settings = run_settings(
                given,
                FinetuneSettings(**record["settings"]),
                FinetuneSettings(),
                "pass RUN_DIR as the model",
            )
            model = record["base"]["path"]
            found = checkpoint_dirs(self.dir)
            checkpoint = found[-1] if found else None
        else:
            if self.dir.exists() and not self.dir.is_dir():
                raise TrainError(
                    f"{self.dir} exists and is not a directory; choose a new run directory"
                )
            if self.dir.exists() and any(self.dir.iterdir()):
                hint = "pass --resume to continue it" if record_path.is_file() else ""
                raise TrainError(
                    f"{self.dir} exists and is not empty; " + (hint or "choose a new run directory")
                )
            record = {}
            settings = run_settings(given, None, FinetuneSettings())
        source = run_source(model)
        spec = source.spec
        tuning = spec.finetune
        if lora is None and tuning is not None:
            lora = LoraSettings(
                tuning.lora.r, tuning.lora.alpha, tuning.lora.dropout, tuple(tuning.lora.targets)
            )
        lora = lora or LoraSettings()
        if spec.architecture == "encoder-only":
            raise TrainError(
                f"{spec.name} is encoder-only (masked-lm): it does not generate; fine-tune a "
                "decoder-only or encoder-decoder model"
            )
        settings = settings.resolved(spec)
        problems = settings.problems(spec, self.cluster.world)
        if problems:
            raise TrainError("; ".join(problems))
        check_memory(spec, build_bytes(spec), "building it in fp32", "cpu")
        try:  # a target the spec's layers lack is refused by name once the model exists
            step = lora_memory(
                spec,
                batch_size=settings.batch_size // (self.cluster.world * settings.accumulate),
                seq_len=settings.seq_len,
                rank=lora.r,
                targets=lora.targets,
                checkpointing=settings.checkpointing,
            )
        except ValueError:
            step = None
        if step is not None:
            shards = self.cluster.world if self.cluster.strategy == "fsdp" else 1
            check_memory(
                spec,
                step.frozen_weights // shards + step.adapter_states,
                "fine-tuning it (frozen weights, the adapter and its AdamW states; "
                "llmspec estimate --finetune lora adds the activations)",
                self.cluster.device,
            )
        base_sha = sha256_of(source.weights) if source.weights is not None else None
        if record and record["base"]["weights_sha256"] != base_sha:
            raise TrainError(
                f"the base model {record['base']['path']} changed since the run started (its "
                "weights differ); resume with the same base, or start a new run"
            )
        source_dir = (
            Path(model) if not isinstance(model, ModelSpec) and Path(model).is_dir() else None
        )
        template = None
        ids = TokenIds.from_tokenizer(spec, source.tokenizer)
        # the spec's plain template first, then the model directory's chat template
        own = tuning.template if tuning is not None else None
        plain = own or PLAIN_PROMPT
        chat = source_dir / CHAT_TEMPLATE_FILE if source_dir is not None else None
        if own is None and chat is not None and chat.is_file():
            named = spec.vocabulary.special_tokens.present()
            template = ChatTemplate.read(chat, named.get("bos", ""), named.get("eos", ""))
        encoder_decoder = spec.architecture == "encoder-decoder"
        renderer = Renderer(
            source.tokenizer, ids, encoder_decoder, settings.seq_len, template, plain
        )
        conversations = [c for path in jsonl_files(data) for c in read_conversations(path)]
        examples, dropped = renderer.examples(conversations)
        if eval_data:
            held_conv = [c for path in jsonl_files(eval_data) for c in read_conversations(path)]
            held_out, _ = renderer.examples(held_conv)
            train = examples
        else:
            train_at, held_at = split_held_out(len(examples), settings.seed)
            train = [examples[i] for i in train_at]
            held_out = [examples[i] for i in held_at]
        if not train:
            raise TrainError(
                "no training example fits: every response starts beyond seq_len "
                f"{settings.seq_len}; raise --seq-len or shorten the prompts"
                if dropped
                else "no training examples: give more records"
            )
        digest = hashlib.sha256()
        for example in train + held_out:
            for name in sorted(example):
                digest.update(example[name].tobytes())
        if record.get("examples_sha256", digest.hexdigest()) != digest.hexdigest():
            raise TrainError(
                "the data changed since the run started (its examples differ); resume with the "
                "same files, or start a new run"
            )
        # a spec object is stored as base.yaml in the run, so that the run can resume from it
        base_path = str(
            (self.dir / BASE_SPEC if isinstance(model, ModelSpec) else Path(model)).resolve()
        )
        record = {
            "kind": "finetune",
            "spec": spec_sha256(stored_spec(spec)),
            "base": {"path": base_path, "weights_sha256": base_sha},
            "settings": asdict(settings),
            "lora": lora.to_json(),
            "data": [p.name for p in jsonl_files(data)],
            "eval_data": [p.name for p in jsonl_files(eval_data or [])],
            "examples": {"train": len(train), "held_out": len(held_out), "dropped": dropped},
            "template": (
                CHAT_TEMPLATE_FILE if template is not None else "spec" if own else "plain"
            ),
            "examples_sha256": digest.hexdigest(),
        }
        pad_id = ids.pad if ids.pad is not None else 0
        return _Setup(
            replace(source, spec=stored_spec(spec)),
            source_dir,
            settings,
            lora,
            checkpoint,
            record,
            train,
            held_out,
            pad_id,
            encoder_decoder,
            model if isinstance(model, ModelSpec) else None,
        )

    def _write_run_files(self, setup: _Setup, base_spec: ModelSpec | None) -> None:
        def write() -> None:
            with writing(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.dir / SPEC_FILE, dump_spec(setup.source.spec))
            write_atomic(self.dir / TOKENIZER_FILE, setup.source.tokenizer.to_str())
            write_atomic(self.dir / RUN_FILE, json.dumps(setup.record, indent=2) + "\n")
            if base_spec is not None:
                write_atomic(self.dir / BASE_SPEC, dump_spec(base_spec))
            template = setup.source_dir / CHAT_TEMPLATE_FILE if setup.source_dir else None
            if template is not None and template.is_file():
                shutil.copyfile(template, self.dir / CHAT_TEMPLATE_FILE)
            root = self.dir / CHECKPOINTS
            with writing(root):
                root.mkdir(exist_ok=True)
            remove_stale(root, None, ".partial")

        self._main_writes(write)
        self._together()

    # Training ------------------------------------------------------------------------

    def _precision(self, spec: ModelSpec, bf16: bool) -> Precision:
        import torch

        if bf16:
            device = self.cluster.device
            return Precision(lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        return precision_for(spec, self.cluster.device)

    def _model(self, setup: _Setup, weights: Path | None) -> Any:
        """The base model with its adapter, adapter trainable, on the run's device."""
        import torch

        from llmspec.builder import build

        torch.manual_seed(setup.settings.seed)
        base = build(setup.source.spec, dtype="fp32", weights=weights)
        return apply_lora(base, setup.lora)

    def train(self, setup: _Setup) -> Path:
        import torch

        cluster, settings = self.cluster, setup.settings
        spec = setup.source.spec
        self._write_run_files(setup, setup.base_spec)
        progress = Progress(self.show, settings.steps)
        precision = self._precision(spec, settings.bf16)
        if precision.note:
            progress.note(precision.note)

        model = self._model(setup, setup.source.weights)
        if settings.checkpointing:
            checkpoint_layers(model)
        model.to(cluster.device)
        model.train()
        wrapped = wrap_model(model, spec, cluster)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.lr, betas=BETAS, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, settings.warmup, settings.steps)
        )
        start, state = 0, {"tokens": 0, "elapsed_s": 0.0}
        if setup.checkpoint is not None:
            from safetensors.torch import load_file
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            saved: dict[str, Any] = load_file(str(setup.checkpoint / WEIGHTS_FILE))
            set_model_state_dict(
                wrapped, saved, options=StateDictOptions(full_state_dict=True, strict=False)
            )
            start, state = load_checkpoint(
                setup.checkpoint, wrapped, optimizer, scheduler, precision
            )
            progress.note(f"resuming {self.dir} at step {start} of {settings.steps}")
        metrics = self._open_metrics(start)
        held_out = [
            collate(setup.held_out[i : i + settings.batch_size], setup.pad_id)
            for i in range(0, len(setup.held_out), settings.batch_size)
        ]
        last_eval = None
        count = functools.partial(response_tokens, encoder_decoder=setup.encoder_decoder)
        try:
            if start == 0:
                last_eval = self._evaluate(wrapped, held_out, precision, count)
                if last_eval is not None:
                    self._main_writes(self._record, metrics, {"step": 0, "eval_loss": last_eval})
                first_eval = last_eval
            else:
                first_eval = next(
                    (
                        r["eval_loss"]
                        for r in read_metrics(self.dir / METRICS_FILE)
                        if "eval_loss" in r
                    ),
                    None,
                )
            orders: dict[int, np.ndarray] = {}
            lengths = [len(e["labels"]) + len(e["input_ids"]) for e in setup.train]
            for step in range(start, settings.steps):
                self._together()
                lr = scheduler.get_last_lr()[0]
                began = time.perf_counter()
                micro = self._micro_batches(setup, step, lengths, orders)
                loss, tokens = self._step(
                    wrapped, model, optimizer, scheduler, precision, micro, setup, step
                )
                elapsed = time.perf_counter() - began
                state["tokens"] += tokens
                state["elapsed_s"] += elapsed
                done = step + 1
                if not math.isfinite(loss):
                    raise TrainError(
                        f"the loss became {loss} at step {done}; lower --lr or check the data"
                    )
                line = {
                    "step": done,
                    "loss": loss,
                    "lr": lr,
                    "tokens": state["tokens"],
                    "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                }
                self._main_writes(self._record, metrics, line)
                if done % settings.eval_every == 0 or done == settings.steps:
                    last_eval = self._evaluate(wrapped, held_out, precision, count)
                    if last_eval is not None:
                        self._main_writes(
                            self._record, metrics, {"step": done, "eval_loss": last_eval}
                        )
                rate = state["tokens"] / state["elapsed_s"] if state["elapsed_s"] else 0.0
                shown = f" | eval {last_eval:.3f}" if last_eval is not None else ""
                progress.update(
                    done,
                    f"step {done}/{settings.steps} | loss {loss:.3f}{shown} | lr {lr:.2e} | "
                    f"{human_number(rate)} tok/s",
                )
                if done % settings.checkpoint_every == 0 or done == settings.steps:
                    model_state, optimizer_state = state_dicts(
                        wrapped, optimizer, trainable_only=True
                    )
                    at = (self.dir, done, adapter_only(model_state), optimizer_state, scheduler)
                    self._main_writes(save_checkpoint, *at, precision, state)
                    self._main_writes(self._plot, f"{spec.name}: LoRA fine-tuning")
                    self._together()
            if cluster.strategy is None:  # the trained model itself: no second copy
                self._main_writes(self._finish, model)
            else:  # every process takes part in gathering the adapter; process 0 merges it
                final, _ = state_dicts(wrapped, optimizer, trainable_only=True)
                self._main_writes(self._finish_gathered, setup, final)
            self._main_writes(self._plot, f"{spec.name}: LoRA fine-tuning")
            self._together()
        finally:
            if metrics is not None:
                with contextlib.suppress(OSError):
                    metrics.close()
            progress.close()
        if cluster.main and self.show:
            before = f"{first_eval:.3f}" if first_eval is not None else "-"
            after = f"{last_eval:.3f}" if last_eval is not None else "-"
            print(
                f"fine-tuned {spec.name} with LoRA r={setup.lora.r} "
                f"({human_number(sum(p.numel() for p in trainable))} trainable parameters) for "
                f"{settings.steps} steps: {self.dir}; held-out loss on the responses "
                f"{before} -> {after}",
                file=sys.stderr,
            )
        return self.dir

    def _finish(self, peft_model: Any) -> None:
        """The adapter alone, then the weights with it merged in (``peft_model`` is unwrapped
        by the merge: the run's last use of it)."""
        save_adapter(self.dir / ADAPTER_DIR, peft_model)
        write_atomic(self.dir / WEIGHTS_FILE, weights_bytes(merged_weights(peft_model)))

    def _finish_gathered(self, setup: _Setup, final: dict[str, Any]) -> None:
        """Process 0 under a strategy: :meth:`_finish` on a model of its own, with the adapter
        of the gathered state dict (the wrapped model is sharded or replicated)."""
        fresh = self._model(setup, setup.source.weights)
        load_adapter(fresh, final)
        self._finish(fresh)

    def _micro_batches(
        self, setup: _Setup, step: int, lengths: list[int], orders: dict[int, np.ndarray]
    ) -> list[Features]:
        """This process's micro-batches of step ``step``."""
        settings, world, rank = setup.settings, self.cluster.world, self.cluster.rank
        n = len(setup.train)
        size = settings.batch_size // (world * settings.accumulate)
        out = []
        for part in range(settings.accumulate):
            first = step * settings.batch_size + (part * world + rank) * size
            examples = []
            for position in range(first, first + size):
                epoch = position // n
                if epoch not in orders:
                    orders.clear()
                    orders[epoch] = epoch_order(lengths, settings.batch_size, settings.seed, epoch)
                examples.append(setup.train[int(orders[epoch][position % n])])
            out.append(collate(examples, setup.pad_id))
        return out

    def _step(
        self,
        wrapped: Any,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        precision: Precision,
        micro: list[Features],
        setup: _Setup,
        step: int,
    ) -> tuple[float, int]:
        """One optimizer step over this process's micro-batches; (the step's loss over all
        processes, the tokens all processes read)."""
        import torch

        cluster = self.cluster
        torch.manual_seed(step_seed(setup.settings.seed, step, cluster.rank, 2))
        counts = [response_tokens(b, setup.encoder_decoder) for b in micro]
        tokens = sum(int(v.sum()) for b in micro for k, v in b.items() if k.endswith("mask"))
        total, all_tokens = cluster.all_sum([float(sum(counts)), float(tokens)])
        loss_sum = 0.0
        for batch, count in zip(micro, counts, strict=True):
            with precision.autocast():
                output = wrapped(**to_torch(batch, cluster.device))
            loss = output.loss if count else output.logits.sum() * 0.0
            weight = count * cluster.world / total if total else 0.0
            scaled = loss * weight
            if precision.scaler is not None:
                precision.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            loss_sum += float(loss.detach()) * count
        if precision.scaler is not None:
            precision.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], GRAD_CLIP
        )
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        (loss_all,) = cluster.all_sum([loss_sum])
        return (loss_all / total if total else 0.0), int(all_tokens)


def checkpoint_layers(model: Any) -> int:
    """Recompute every layer of the model's stacks (``*.layers``) in the backward pass instead
    of keeping its activations; the number of layers so wrapped."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    def recomputed(forward: Any, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    count = 0
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList):
            for layer in module:
                layer.forward = functools.partial(recomputed, layer.forward)
                count += 1
    return count


__all__ = ["FinetuneSettings", "finetune"]
