"""Golden files of the generated models, one per example spec.

``tests/codegen/golden/<spec name>.py`` holds the source that ``llmspec codegen`` generates
for each spec in ``specs/``. After a change to the templates or to lowering::

    python tests/codegen/golden_files.py --check  # exit 1, with a diff, if a file is stale
    python tests/codegen/golden_files.py --fix    # rewrite them (and drop orphaned ones)

Review the diff of ``--fix`` like any code change: it is what every generated model becomes.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from llmspec.files import write_atomic
from llmspec.spec.loading import SPEC_SUFFIXES, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
GOLDEN = ROOT / "tests" / "codegen" / "golden"


def expected_sources(specs_dir: Path = SPECS) -> dict[str, str]:
    """Golden file name -> the source generated now, for every spec file in ``specs_dir``."""
    from llmspec.builder import generate_source

    out: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for path in sorted(p for p in specs_dir.iterdir() if p.suffix in SPEC_SUFFIXES):
        spec = load_spec(path)
        name = f"{spec.name}.py"
        if name in out:
            raise ValueError(f"{path} and {origin[name]} both name their spec {spec.name!r}")
        out[name] = generate_source(spec)
        origin[name] = path
    return out


def differences(specs_dir: Path = SPECS, golden_dir: Path = GOLDEN) -> list[str]:
    """One report (a unified diff, or what is missing or orphaned) per stale golden file."""
    wanted = expected_sources(specs_dir)
    present = {p.name for p in golden_dir.glob("*.py")} if golden_dir.is_dir() else set()
    reports = []
    for name, source in wanted.items():
        path = golden_dir / name
        if name not in present:
            reports.append(f"{path}: missing")
            continue
        current = path.read_text(encoding="utf-8")
        if current != source:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                source.splitlines(keepends=True),
                fromfile=f"{path} (golden)",
                tofile=f"{path} (generated now)",
            )
            reports.append("".join(diff))
    for name in sorted(present - set(wanted)):
        reports.append(f"{golden_dir / name}: no spec in {specs_dir} generates it")
    return reports


def fix(specs_dir: Path = SPECS, golden_dir: Path = GOLDEN) -> list[str]:
    """Rewrite stale or missing golden files and delete orphaned ones; returns what changed."""
    wanted = expected_sources(specs_dir)
    golden_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, source in wanted.items():
        path = golden_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != source:
            write_atomic(path, source)
            changed.append(f"wrote {path}")
    for path in sorted(golden_dir.glob("*.py")):
        if path.name not in wanted:
            path.unlink()
            changed.append(f"removed {path}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/codegen/golden_files.py",
        description="Check or regenerate the golden generated-model files.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 with a diff if stale")
    mode.add_argument("--fix", action="store_true", help="rewrite the golden files")
    parser.add_argument("--specs", type=Path, default=SPECS, help=f"default: {SPECS}")
    parser.add_argument("--golden", type=Path, default=GOLDEN, help=f"default: {GOLDEN}")
    args = parser.parse_args(argv)
    if args.fix:
        for line in fix(args.specs, args.golden):
            print(line)
        return 0
    reports = differences(args.specs, args.golden)
    for report in reports:
        sys.stdout.write(report if report.endswith("\n") else report + "\n")
    if reports:
        print(
            f"{len(reports)} golden file(s) out of date; "
            "run: python tests/codegen/golden_files.py --fix",
            file=sys.stderr,
        )
        return 1
    print(f"golden files up to date ({args.golden})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
