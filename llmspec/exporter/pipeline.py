"""``llmspec export``: a spec (or a directory with weights) in, a verified artifact out.

The artifact (see :mod:`runtime.artifact` for the format) is written into a hidden staging
directory beside the target, checked by the parity gate (:mod:`llmspec.exporter.parity`), fsynced,
and
only then published under its final name in one rename (an existing artifact is swapped
atomically, and only with ``force``). A failure or a ``kill -9`` at any point leaves the
previous artifact as it was and nothing under the final name that is not a whole artifact; a
killed export may leave a hidden ``.NAME.*.partial`` sibling, which the next export to the same
target removes (and which is safe to delete). A full disk or a read-only folder ends in
:class:`llmspec.files.OutputError` naming the artifact. Every file of the artifact gets the same
permissions, ``0o666`` less the umask.

An ``output`` that is a symbolic link to an artifact directory (``current -> v1``, as
deployments flip ``current`` between versions) is followed: with ``force`` the directory it
points to is replaced, atomically, and the link is kept. A link to nothing is refused.

Sources:

* a spec file: exported with freshly initialized weights (seeded, so the same spec gives the
  same weights);
* a directory holding ``spec.yaml`` and ``weights.safetensors`` (from ``llmspec import-hf`` or
  ``llmspec train``), and optionally ``tokenizer.json``, which is used as it is;
* ``weights=`` overrides the weights file in either case.

Precision: ``fp32``, ``fp16`` and ``bf16`` export the model in that dtype; ``int8`` and ``int4``
quantize the fp32 graphs (see :mod:`llmspec.exporter.quantize`). ONNX Runtime's CPU provider runs
fp32,
fp16, int8 and int4 graphs; it has no bf16 kernels, so bf16 artifacts can only be exported (and
gated) where the CUDA provider works.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from llmspec import __version__
from llmspec.builder import DTYPES, INIT_SEED, build
from llmspec.estimates.report import estimate
from llmspec.estimates.units import human_bytes, human_count
from llmspec.exporter.graphs import (
    ExportError,
    export_graph,
    graph_info,
    plan_graphs,
    quiet,
)
from llmspec.exporter.parity import (
    DECODE_STEPS,
    ParityError,
    ParityReport,
    check_decoder_only,
    check_encoder_decoder,
    check_encoder_only,
)
from llmspec.exporter.quantize import (
    ACCURACY_LEVELS,
    OUTPUT_PRECISIONS,
    Int4Choice,
    quantize_int4,
    quantize_int8,
)
from llmspec.exporter.rewrites.attention import FUSE_ATTENTION, SEQUENCE_MAJOR
from llmspec.exporter.rewrites.kv_cache import IN_PLACE_CACHE, SELECT_LOGITS
from llmspec.exporter.rewrites.matmul_packing import PACK_MATMULS
from llmspec.exporter.rewrites.ort_optimizer import optimize_graph, rewrite_graph_file
from llmspec.exporter.rewrites.rotary import FUSE_ROTARY
from llmspec.files import publishing, write_atomic
from llmspec.sources import ModelSource, NoSpecInDirectory, resolve_source
from llmspec.spec.loading import dump_spec, spec_sha256
from llmspec.spec.sections import ModelSpec
from llmspec.tokenizer import TokenizerMismatch
from runtime import artifact as fmt
from runtime.decoding import DecodingChain, Greedy
from runtime.reading import UnreadableFile, read_text

Progress = Callable[[str], None]


def _with_precision(
    spec: ModelSpec, dtype: str | None, quantize: str | None, block_size: int | None = None
) -> ModelSpec:
    """The spec with the export's precision, validated like the spec itself."""
    current = spec.precision
    wanted = {
        "dtype": dtype or current.dtype,
        "quantize": quantize or current.quantize,
        "block_size": block_size or current.block_size,
    }
    data = spec.model_dump()
    data["precision"] = wanted
    try:
        return ModelSpec.model_validate(data)
    except ValueError as err:
        problems = "; ".join(
            e["msg"].removeprefix("Value error, ") for e in getattr(err, "errors", lambda: [])()
        )
        raise ExportError(
            f"precision {wanted['dtype']} with quantize {wanted['quantize']}: {problems or err}"
        ) from None


def _tokenizer(src: ModelSource, spec: ModelSpec) -> Any:
    try:
        return src.tokenizer(spec)
    except TokenizerMismatch as err:
        raise ExportError(str(err)) from None


BF16_NEEDS_CUDA = (
    "bf16 graphs need the CUDA provider to be checked (ONNX Runtime's CPU provider has no bf16 "
    "kernels) and CUDA is not usable here; export fp16 or fp32 on this machine, or bf16 on one "
    "with a GPU"
)


def _sessions(paths: list[Path], precision: str) -> tuple[list[Any], str]:
    """ONNX Runtime sessions for the gate, and the provider they really use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if precision == "bf16":
        sessions = [
            ort.InferenceSession(str(p), options, providers=["CUDAExecutionProvider"])
            for p in paths
        ]
        if any("CUDAExecutionProvider" not in s.get_providers() for s in sessions):
            raise ExportError(BF16_NEEDS_CUDA)
        return sessions, "CUDAExecutionProvider"
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths
    ]
    return sessions, "CPUExecutionProvider"


def run_gate(
    spec: ModelSpec,
    reference: torch.nn.Module,
    graphs: list[Path],
    precision: str,
    start_id: int,
    tolerance: float | None = None,
) -> ParityReport:
    """Compare the graphs with the fp32 PyTorch model; raise :class:`ParityError` on failure.
    ``tolerance`` overrides the precision's relative tolerance."""
    sessions, provider = _sessions(graphs, precision)
    report = ParityReport(precision=precision, provider=provider, tolerance_override=tolerance)
    if spec.architecture == "decoder-only":
        check_decoder_only(spec, reference, sessions[0], report)
    elif spec.architecture == "encoder-only":
        check_encoder_only(spec, reference, sessions[0], report)
    else:
        check_encoder_decoder(spec, reference, sessions[0], sessions[1], start_id, report)
    if not report.passed:
        raise ParityError(report)
    return report


def _export_graphs(
    spec: ModelSpec,
    reference: torch.nn.Module,
    staged: Path,
    say: Progress,
    int4: Int4Choice | None = None,
) -> tuple[list[Path], dict[str, dict[str, int]], dict[str, Any]]:
    """Export, fuse (see :mod:`llmspec.exporter.rewrites.ort_optimizer`) and, if asked, quantize
    the graphs (int4 as ``int4``, default: the spec's block size and the measured defaults of
    :class:`Int4Choice`).

    Returns the graph paths, each graph's fused-operator counts and the quantization record
    for the manifest (empty when nothing is quantized)."""
    precision, quantize = spec.precision.dtype, spec.precision.quantize
    fusions: dict[str, dict[str, int]] = {}
    if quantize == "none":
        model = reference if precision == "fp32" else _cast(reference, precision)
        dtype = next(model.parameters()).dtype
        paths = []
        for plan in plan_graphs(spec, model, dtype):
            say(f"exporting {plan.file} ({precision})")
            path = export_graph(plan, staged)
            with quiet(), _stage(plan.file, "optimizing"):
                rewrites = (
                    PACK_MATMULS,
                    FUSE_ROTARY,
                    SELECT_LOGITS,
                    FUSE_ATTENTION,
                    SEQUENCE_MAJOR,
                    IN_PLACE_CACHE,
                )
                fusions[plan.file] = optimize_graph(path, spec, *rewrites).fused
            paths.append(path)
        return paths, fusions, {}
    scratch = staged / ".fp32"
    scratch.mkdir()
    paths = []
    choice = int4 or Int4Choice(block_size=spec.precision.block_size)
    record: dict[str, Any] = {}
    for plan in plan_graphs(spec, reference, torch.float32):
        say(f"exporting {plan.file} (fp32, to quantize)")
        fp32 = export_graph(plan, scratch)
        target = staged / plan.file
        say(f"quantizing {plan.file} to {quantize}")
        with quiet(), _stage(plan.file, "optimizing and quantizing"):
            fusions[plan.file], facts = quantize_graph(fp32, target, spec, quantize, choice)
            record = facts if quantize == "int8" else _merge(record, facts)
        paths.append(target)
    shutil.rmtree(scratch)
    return paths, fusions, record


def quantize_graph(
    fp32: Path, target: Path, spec: ModelSpec, quantize: str, int4: Int4Choice
) -> tuple[dict[str, int], dict[str, Any]]:
    """Fuse and quantize the exported fp32 graph ``fp32`` (rewritten in place) into ``target``
    as :func:`export` does (bench/quality.py times variants with it).

    Returns the fused-operator counts and the graph's quantization record."""
    done = optimize_graph(fp32, spec, PACK_MATMULS, FUSE_ROTARY, SELECT_LOGITS)
    if quantize == "int8":
        record = quantize_int8(fp32, target)
    else:
        record = quantize_int4(fp32, target, int4)
    after = rewrite_graph_file(target, FUSE_ATTENTION, SEQUENCE_MAJOR, IN_PLACE_CACHE)
    for operator, count in after.fused.items():
        done.add(operator, count)
    return done.fused, record


def _merge(record: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """One quantization record for all graphs: the same settings, their output nodes listed
    together (an encoder graph has none)."""
    if not record:
        return graph
    nodes = [*record["output_nodes"], *graph["output_nodes"]]
    return {**record, "output_nodes": nodes}


@contextlib.contextmanager
def _stage(graph: str, what: str) -> Iterator[None]:
    """Name the graph and the stage when ONNX Runtime's optimizer, a quantizer or one of our
    rewrites fails (they raise many types), instead of a bare traceback."""
    try:
        yield
    except (OSError, MemoryError):
        raise  # the disk or memory: the caller's handling applies
    except Exception as err:
        raise ExportError(
            f"{what} {graph} failed: {type(err).__name__}: {err}. This is a bug in llmspec or "
            "in ONNX Runtime's tools, not in your spec: please report it with the spec"
        ) from err


def _opset(path: Path) -> int:
    """The default-domain opset a graph file imports (23 where attention was fused)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _cast(model: torch.nn.Module, precision: str) -> torch.nn.Module:

    return copy.deepcopy(model).to(DTYPES[precision]).eval()


def _generation(spec: ModelSpec, stop_ids: list[int]) -> dict[str, Any]:
    """generation.json: the defaults runtime.generation.read_generation reads. ``stop_ids``
    (eos first) is written only when the spec lists stop tokens, so other artifacts keep the
    file they always had."""
    if spec.generation is not None:
        chain = DecodingChain(tuple(spec.generation.chain))
        max_new = spec.generation.max_new_tokens
    else:
        # the built-in default, within the context window (runtime.generation's limit)
        chain, max_new = DecodingChain((Greedy(),)), min(64, spec.context_length)
    generation: dict[str, Any] = {"max_new_tokens": max_new, "chain": chain.to_json()}
    if stop_ids:
        generation["stop_token_ids"] = stop_ids
    return generation


def _model_card(spec: ModelSpec, manifest: fmt.Manifest, generation: dict[str, Any]) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("llmspec.exporter", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    numbers = estimate(spec, batch_size=1, seq_len=spec.context_length).to_json()
    chain = DecodingChain.from_json(generation["chain"])
    weight_key = (
        spec.precision.quantize if spec.precision.quantize != "none" else spec.precision.dtype
    )
    return environment.get_template("model_card.md.jinja").render(
        spec=spec,
        manifest=manifest,
        parameters=human_count(numbers["parameters"]["total"]),
        parameters_exact=f"{numbers['parameters']['total']:,}",
        weights=human_bytes(numbers["weights_bytes"][weight_key]),
        kv_per_token=human_bytes(numbers["inference"]["kv_cache_bytes_per_token"]),
        chain=str(chain),
        max_new_tokens=generation["max_new_tokens"],
        stop_tokens=", ".join(
            f"`{text}`" for text in (spec.generation.stop_tokens if spec.generation else [])
        ),
        parity=manifest.parity,
    )


def export(
    source: str | Path,
    output: str | Path,
    *,
    weights: str | Path | None = None,
    precision: str | None = None,
    quantize: str | None = None,
    force: bool = False,
    tolerance: float | None = None,
    progress: Progress | None = None,
    int4: Int4Choice | None = None,
) -> Path:
    """Export ``source`` (a spec file or a model directory) to the artifact ``output``.

    Args:
        source: a spec file, or a directory with ``spec.yaml`` and ``weights.safetensors``.
        output: the artifact directory to create.
        weights: a safetensors file to use instead of the source's weights.
        precision: ``fp32``, ``fp16`` or ``bf16`` (default: the spec's).
        quantize: ``none``, ``int8`` or ``int4`` (default: the spec's).
        force: replace an existing artifact (atomically); when ``output`` is a symbolic link
            to an artifact, the directory it points to is replaced and the link kept.
        tolerance: the parity gate's relative tolerance instead of the precision's (for
            example int4 on random weights, whose logits are nearly flat); top-1 must still
            agree, and the manifest records the tolerance used.
        progress: called with one line per stage (default: print to stderr).
        int4: how to quantize to int4 (block size, accuracy level, output projection) instead
            of the spec's block size and :class:`~llmspec.exporter.quantize.Int4Choice`'s
            measured defaults (bench/quality.py compares them); its block size is written
            into the artifact's spec.

    Returns the artifact's path. Raises :class:`ExportError` (:class:`ParityError` when the gate
    fails), :class:`llmspec.SpecError`, :class:`llmspec.builder.WeightsError`, or
    :class:`llmspec.files.OutputError` (an ``OSError``) when the artifact cannot be written.
    """
    say = progress or (lambda line: print(f"llmspec export: {line}", file=sys.stderr))
    target = Path(output)
    if target.is_symlink() and not target.exists():
        raise ExportError(
            f"{target} is a symbolic link to {os.readlink(target)}, which does not exist; "
            "point it at an artifact directory, or remove it"
        )
    if target.exists() and not force:
        raise ExportError(f"{target} exists; pass --force (force=True) to replace it")
    if target.exists() and not (target / fmt.MANIFEST).is_file():
        raise ExportError(f"{target} exists and is not an artifact; refusing to replace it")
    try:
        src = resolve_source(source, weights)
    except NoSpecInDirectory as err:
        raise ExportError(str(err)) from None
    spec = _with_precision(src.spec, precision, quantize, int4.block_size if int4 else None)
    if int4 is not None and int4.accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(
            f"int4 accuracy_level must be one of {', '.join(map(str, ACCURACY_LEVELS))}, "
            f"got {int4.accuracy_level}"
        )
    if int4 is not None and int4.output not in OUTPUT_PRECISIONS:
        raise ExportError(
            f"int4 output projection precision must be one of {', '.join(OUTPUT_PRECISIONS)}, "
            f"got {int4.output!r}"
        )
    if spec.precision.dtype == "bf16":
        from runtime.session import cuda_status

        usable, why = cuda_status()
        if not usable:
            raise ExportError(f"{BF16_NEEDS_CUDA} ({why})")
    say(f"building {spec.name} ({spec.architecture})")
    torch.manual_seed(INIT_SEED)
    reference = build(spec, dtype="fp32", weights=src.weights).eval()
    tokenizer = _tokenizer(src, spec)
    from llmspec.tokenizer import check_fits

    special = check_fits(tokenizer, spec)
    if spec.architecture == "encoder-decoder":
        special["decoder_start"] = special[spec.decoder_start]
    chat_template = _chat_template(source)

    with publishing(target, replace=force) as staged:
        graphs, fusions, quantization = _export_graphs(spec, reference, staged, say, int4)
        prefill = (
            "prefill (whole, and the last position in one run and in chunks)"
            if spec.architecture == "decoder-only"
            else "prefill"
        )
        say(f"parity gate: {prefill}, {DECODE_STEPS} cached decode steps, a padded batch")
        report = run_gate(
            spec,
            reference,
            graphs,
            spec.precision.quantize if spec.precision.quantize != "none" else spec.precision.dtype,
            special.get("decoder_start", 0),
            tolerance,
        )
        say(f"parity gate passed (max |diff| {report.max_abs_diff:.3g})")
        _write_files(
            spec,
            reference,
            tokenizer,
            special,
            graphs,
            report,
            fusions,
            staged,
            chat_template,
            quantization,
        )
    say(f"wrote {target}")
    return target


def _chat_template(source: str | Path) -> str | None:
    """A model directory's ``chat_template.jinja`` (from ``llmspec import-hf``), which the
    artifact carries as its optional file of that name; None for a spec file or a directory
    without one."""
    path = Path(source) / fmt.CHAT_TEMPLATE
    if not Path(source).is_dir() or not path.is_file():
        return None
    try:
        return read_text(path, fmt.CHAT_TEMPLATE_LIMIT, "chat template")
    except UnreadableFile as err:
        raise ExportError(str(err)) from None


def _write_files(
    spec: ModelSpec,
    reference: torch.nn.Module,
    tokenizer: Any,
    special: dict[str, int],
    graphs: list[Path],
    report: ParityReport,
    fusions: dict[str, dict[str, int]],
    staged: Path,
    chat_template: str | None = None,
    quantization: dict[str, Any] | None = None,
) -> None:
    from safetensors.torch import save_file

    from llmspec.builder import DTYPES, generate_source

    write_atomic(staged / fmt.SPEC, dump_spec(spec))
    write_atomic(staged / fmt.MODEL_SOURCE, generate_source(spec))
    stored = DTYPES[spec.precision.dtype] if spec.precision.quantize == "none" else torch.float32
    state = {k: v.detach().to(stored).contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(staged / fmt.WEIGHTS), metadata={"spec_sha256": spec_sha256(spec)})
    write_atomic(staged / fmt.TOKENIZER, tokenizer.to_str(pretty=True))  # .save leaves half
    from llmspec.tokenizer import stop_token_ids

    generation = _generation(spec, stop_token_ids(tokenizer, spec))
    write_atomic(staged / fmt.GENERATION, json.dumps(generation, indent=2) + "\n")
    if chat_template is not None:
        write_atomic(staged / fmt.CHAT_TEMPLATE, chat_template)
    manifest = fmt.Manifest(
        format_version=fmt.FORMAT_VERSION,
        llmspec_version=__version__,
        name=spec.name,
        architecture=spec.architecture,
        spec_sha256=spec_sha256(spec),
        precision=spec.precision.dtype,
        quantize=spec.precision.quantize,
        opset=max(_opset(path) for path in graphs),
        vocab_size=spec.vocabulary.size,
        context_length=spec.context_length,
        layers=spec.num_decoder_layers or spec.layers,
        kv_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        special_tokens=special,
        graphs={p.name: graph_info(p) for p in graphs},
        files={},
        parity=report.to_json(),
        fusions=fusions,
        quantization=quantization or {},
    )
    write_atomic(staged / fmt.MODEL_CARD, _model_card(spec, manifest, generation))
    files = sorted(p for p in staged.iterdir() if p.is_file())
    manifest = dataclasses.replace(manifest, files={p.name: fmt.file_info(p) for p in files})
    write_atomic(staged / fmt.MANIFEST, manifest.to_json())
