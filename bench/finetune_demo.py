"""The data and the comparison of ``make demo-finetune``.

``python bench/finetune_demo.py data OUT_DIR``: an instruction set made from this machine's
Python standard library (every machine has one): for each public function and class of a few
modules with a docstring, the record ``{"prompt": "What does json.dumps do?", "response":
<the docstring's first line>}``. A seeded tenth is written to ``held_out.jsonl``, the rest to
``train.jsonl``.

``python bench/finetune_demo.py compare BASE_ARTIFACT TUNED_ARTIFACT HELD_OUT [N]``: the
answers of both artifacts (greedy, through the ONNX runtime) to the first N held-out prompts,
in the plain template the fine-tuning used.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import sys
from pathlib import Path
from typing import Any

MODULES = (
    "json",
    "email.utils",
    "logging",
    "collections",
    "os.path",
    "string",
    "textwrap",
    "shutil",
    "random",
    "statistics",
    "base64",
    "html",
    "math",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "fnmatch",
    "glob",
    "zlib",
    "binascii",
    "calendar",
    "copy",
    "difflib",
    "operator",
)
PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"


def records() -> list[dict[str, str]]:
    out = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            value = getattr(module, attr)
            if not (
                inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.isclass(value)
            ):
                continue
            if (getattr(value, "__module__", None) or "").split(".")[0] != name.split(".")[0]:
                continue  # imported from elsewhere (typing's aliases, ...)
            doc = inspect.getdoc(value) or ""
            first = doc.strip().split("\n")[0].strip()
            if not first or len(first) > 100 or first.startswith(attr + "("):
                continue
            out.append({"prompt": f"What does {name}.{attr} do?", "response": first})
    return out


def write_data(out_dir: Path) -> None:
    data = records()
    random.Random(0).shuffle(data)
    held = len(data) // 10
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, part in (("held_out.jsonl", data[:held]), ("train.jsonl", data[held:])):
        (out_dir / file).write_text("".join(json.dumps(r) + "\n" for r in part))
    print(f"{len(data) - held} training and {held} held-out records in {out_dir}")


def compare(base: str, tuned: str, held_out: str, count: int) -> None:
    import runtime
    from runtime.decoding import DecodingChain, Greedy

    greedy = DecodingChain((Greedy(),))
    models: dict[str, Any] = {"before": runtime.load(base), "after": runtime.load(tuned)}
    lines = Path(held_out).read_text().splitlines()[:count]
    for line in lines:
        record = json.loads(line)
        print(f"Q: {record['prompt']}\n   expected {record['response']}")
        for label, model in models.items():
            prompt = PROMPT.format(prompt=record["prompt"])
            text = model.generate(prompt, max_new_tokens=60, chain=greedy).text
            shown = text.strip().splitlines()[0] if text.strip() else f"{text[:30]!r} (blank)"
            print(f"   {label:9}{shown}")


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "data":
        write_data(Path(sys.argv[2]))
    elif len(sys.argv) >= 5 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 6)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
