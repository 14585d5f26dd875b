"""``llmspec generate``: generate text with an artifact (decoder or encoder-decoder)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmspec.cli.arguments import add_device_arguments, non_negative
from llmspec.cli.inference import load, usage
from llmspec.errors import EXIT_OK
from llmspec.prompts import few_shot_prompts
from runtime.reading import MiB, read_json, read_text

# A schema or grammar file is a few KiB; a bound on what is read.
MAX_GRAMMAR_BYTES = 16 * MiB


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--logprobs",
        type=non_negative,
        metavar="N",
        help="show each token's log-probability and its N most likely alternatives (0 to 20; "
        "the model's raw log-probabilities, before the chain)",
    )
    structured = parser.add_argument_group(
        "structured output (one of; needs llmspec[structured])"
    ).add_mutually_exclusive_group()
    structured.add_argument(
        "--json-schema", metavar="FILE", help="the output is JSON valid under this JSON Schema"
    )
    structured.add_argument(
        "--regex", metavar="PATTERN", help="the whole output matches this regular expression"
    )
    structured.add_argument(
        "--grammar", metavar="FILE", help="the output follows this Lark grammar (a .lark file)"
    )
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


def run(args: argparse.Namespace) -> int:
    """``llmspec generate``."""
    if (args.shots is not None or args.template is not None) and args.examples is None:
        return usage("generate", "--shots and --template go with --examples FILE")
    if args.stream and not args.json and len(args.prompt) > 1:
        return usage(
            "generate",
            "--stream prints one prompt's text as it comes; give one --prompt, or add --json "
            "for JSON lines of every row's events",
        )
    return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if args.examples is not None:
        prompts = few_shot_prompts(prompts, args.examples, args.shots, args.template)
    model = load("generate", args, ("decoder-only", "encoder-decoder"))
    options = {
        "max_new_tokens": args.max_new_tokens,
        "chain": args.chain,
        "seed": args.seed,
        "stop": args.stop,
        "logprobs": args.logprobs,
        "constraint": _constraint(model, args),
    }
    if args.stream:
        stream = model.generate(prompts, stream=True, **options)
        for event in stream:
            if args.json:
                line = {"type": "token", "row": event.row, "token": event.token}
                line.update(text=event.text, finish_reason=event.finish_reason)
                if event.logprob is not None:
                    line["logprob"] = event.logprob.to_json()
                print(json.dumps(line), flush=True)
            else:
                sys.stdout.write(event.text)
                sys.stdout.flush()
        result = stream.result
        if args.json:
            print(json.dumps({"type": "result", **_result_json(model, prompts, result)}))
        else:
            sys.stdout.write("\n")
            if result.logprobs is not None:
                _print_logprobs(model, result.logprobs[0])
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
        if result.logprobs is not None:
            _print_logprobs(model, result.logprobs[row])
    _summary(model, result)
    return EXIT_OK


def _constraint(model: Any, args: argparse.Namespace) -> Any:
    """The structured-output constraint the flags ask for, or None."""
    if args.json_schema is not None:
        schema = read_json(args.json_schema, MAX_GRAMMAR_BYTES, "JSON schema")
        return model.constraint(json_schema=schema)
    if args.regex is not None:
        return model.constraint(regex=args.regex)
    if args.grammar is not None:
        return model.constraint(grammar=read_text(args.grammar, MAX_GRAMMAR_BYTES, "grammar"))
    return None


def _token_text(model: Any, token: int) -> str:
    return json.dumps(model.tokenizer.decode([token], skip_special_tokens=False))


def _print_logprobs(model: Any, entries: list[Any]) -> None:
    """One line per token: its text, log-probability and the top alternatives."""
    for entry in entries:
        line = f"  {_token_text(model, entry.token):>14} {entry.logprob:9.4f}"
        if entry.top:
            line += "  top: " + ", ".join(
                f"{_token_text(model, token)} {value:.4f}" for token, value in entry.top
            )
        print(line)


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
