"""The command-line verbs that run artifacts: ``generate``, ``fill-mask`` and ``embed``.

They need only the runtime (onnxruntime, numpy, tokenizers) and the base install: nothing
here imports torch, onnx, jinja2 or transformers, and ``runtime`` itself is imported when a verb
runs, not when the parser is built.

Exit status: 0 success; 1 bad input (an artifact that is missing, modified or of the wrong
family, a bad prompt, chain, examples file or template, a device that is not usable); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmspec.arguments import add_device_arguments, non_negative, positive

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE = 0, 1, 2


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT")
    parser.add_argument(
        "--prompt",
        action="append",
        required=True,
        metavar="TEXT",
        help="a prompt; repeat for a batch (with --examples: the query of each prompt)",
    )
    parser.add_argument(
        "--chain",
        metavar="SPEC",
        help="decoding chain, e.g. 'temperature=0.7,top_k=50,top_p=0.9,sample' or "
        "'beam_search=4' (default: the artifact's generation.json)",
    )
    parser.add_argument(
        "--max-new-tokens", type=non_negative, metavar="N", help="default: generation.json's"
    )
    parser.add_argument("--seed", type=non_negative, metavar="S", help="seed for sampling")
    parser.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)"
    )
    parser.add_argument(
        "--stream", action="store_true", help="print tokens as they come (JSON lines with --json)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    shots = parser.add_argument_group("in-context learning (see llmspec.prompts)")
    shots.add_argument(
        "--examples", metavar="FILE", help="JSONL examples with 'input' and 'output' keys"
    )
    shots.add_argument(
        "--shots", type=non_negative, metavar="K", help="examples to show (default: all)"
    )
    shots.add_argument(
        "--template",
        metavar="FILE",
        help="layout of one example with {input} and {output} (default: 'Input: {input}\\n"
        "Output: {output}')",
    )
    add_device_arguments(parser)


def add_fill_mask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT")
    parser.add_argument("text", metavar="TEXT", help="a text with one mask token, e.g. [MASK]")
    parser.add_argument("--top-k", type=positive, default=5, metavar="K", help="default 5")
    parser.add_argument("--json", action="store_true", help="print the candidates as JSON")
    add_device_arguments(parser)


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT")
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default="mean",
        help="mean of the real tokens' states (default) or the first ([CLS]) token's",
    )
    parser.add_argument("--normalize", action="store_true", help="scale each vector to norm 1")
    parser.add_argument("--json", action="store_true", help="print the vectors as JSON")
    add_device_arguments(parser)


def _usage(verb: str, message: str) -> int:
    print(f"llmspec {verb}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _bad_input(verb: str, err: Exception) -> int:
    print(f"llmspec {verb}: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _bad_input_types() -> tuple[type[Exception], ...]:
    import runtime
    from llmspec.prompts import PromptError

    return (
        runtime.ArtifactError,
        runtime.RuntimeInputError,
        runtime.DecodingError,
        runtime.DeviceError,
        PromptError,
    )


def _load(verb: str, args: argparse.Namespace, family: tuple[str, ...]) -> Any:
    """The loaded model; raises a bad-input error for a model of another family."""
    import warnings

    import runtime

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", runtime.DeviceFallbackWarning)
        model = runtime.load(args.artifact, device=args.device, threads=args.threads)
    for warning in caught:
        print(f"llmspec {verb}: warning: {warning.message}", file=sys.stderr)
    if model.manifest.architecture not in family:
        hint = "fill-mask or embed" if isinstance(model, runtime.EncoderModel) else "generate"
        raise runtime.RuntimeInputError(
            f"{args.artifact}: {model.manifest.architecture} models cannot {verb}; "
            f"use llmspec {hint}"
        )
    return model


def generate_command(args: argparse.Namespace) -> int:
    """``llmspec generate``."""
    if (args.shots is not None or args.template is not None) and args.examples is None:
        return _usage("generate", "--shots and --template go with --examples FILE")
    if args.stream and not args.json and len(args.prompt) > 1:
        return _usage(
            "generate",
            "--stream prints one prompt's text as it comes; give one --prompt, or add --json "
            "for JSON lines of every row's events",
        )
    try:
        return _generate(args)
    except _bad_input_types() as err:
        return _bad_input("generate", err)


def _generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if args.examples is not None:
        from llmspec.prompts import few_shot_prompts

        prompts = few_shot_prompts(prompts, args.examples, args.shots, args.template)
    model = _load("generate", args, ("decoder-only", "encoder-decoder"))
    options = {
        "max_new_tokens": args.max_new_tokens,
        "chain": args.chain,
        "seed": args.seed,
        "stop": args.stop,
    }
    if args.stream:
        stream = model.generate(prompts, stream=True, **options)
        for event in stream:
            if args.json:
                line = {"type": "token", "row": event.row, "token": event.token}
                line.update(text=event.text, finish_reason=event.finish_reason)
                print(json.dumps(line), flush=True)
            else:
                sys.stdout.write(event.text)
                sys.stdout.flush()
        result = stream.result
        if args.json:
            print(json.dumps({"type": "result", **_result_json(model, prompts, result)}))
        else:
            sys.stdout.write("\n")
            _summary(model, result)
        return EXIT_OK
    result = model.generate(prompts, **options)
    if args.json:
        print(json.dumps(_result_json(model, prompts, result), indent=2))
        return EXIT_OK
    for row, text in enumerate(result.texts):
        if len(result.texts) > 1:
            print(f"==> prompt {row} <==")
        print(text)
    _summary(model, result)
    return EXIT_OK


def _result_json(model: Any, prompts: list[str], result: Any) -> dict[str, Any]:
    data = result.to_json()
    for row, prompt in enumerate(prompts):
        data["results"][row]["prompt"] = prompt
    return {**data, "device": model.device}


def _summary(model: Any, result: Any) -> None:
    generated = sum(len(tokens) for tokens in result.tokens)
    timing = result.timing
    print(
        f"llmspec generate: {generated} tokens ({', '.join(result.finish_reasons)}); "
        f"prefill {timing.prefill_ms:.1f} ms, {timing.per_token_ms:.2f} ms/step on {model.device}",
        file=sys.stderr,
    )


def fill_mask_command(args: argparse.Namespace) -> int:
    """``llmspec fill-mask``."""
    try:
        model = _load("fill-mask", args, ("encoder-only",))
        candidates = model.fill_mask(args.text, top_k=args.top_k)
    except _bad_input_types() as err:
        return _bad_input("fill-mask", err)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "token_id": c.token_id,
                        "token": c.token,
                        "text": c.text,
                        "probability": c.probability,
                    }
                    for c in candidates
                ],
                indent=2,
            )
        )
        return EXIT_OK
    for c in candidates:
        print(f"{c.probability:.4f}\t{c.token_id}\t{c.token!r}\t{c.text}")
    return EXIT_OK


def embed_command(args: argparse.Namespace) -> int:
    """``llmspec embed``."""
    try:
        model = _load("embed", args, ("encoder-only",))
        vectors = model.embed(args.texts, pooling=args.pooling, normalize=args.normalize)
    except _bad_input_types() as err:
        return _bad_input("embed", err)
    if args.json:
        data = {
            "pooling": args.pooling,
            "normalized": args.normalize,
            "dimension": int(vectors.shape[1]),
            "embeddings": [[float(x) for x in row] for row in vectors],
        }
        print(json.dumps(data))
        return EXIT_OK
    for row in vectors:
        print(" ".join(f"{x:.6g}" for x in row))
    return EXIT_OK
