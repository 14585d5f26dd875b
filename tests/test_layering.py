"""DESIGN.md's layering: imports go one way, and the deployable runtime stays light."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "jinja2", "transformers")


def test_import_runtime_pulls_in_no_heavy_package():
    code = (
        "import sys, runtime, runtime.decoding\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_import_llmspec_pulls_in_no_torch():
    code = "import sys, llmspec, llmspec.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def _imported_top_level_modules(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_codegen_and_runtime_import_nothing_of_llmspec():
    for package in ("codegen", "runtime"):
        ours = {"llmspec", "codegen", "runtime"} - {package}
        assert not (_imported_top_level_modules(package) & ours), package


def test_codegen_knows_nothing_of_yaml_or_pydantic():
    assert not (_imported_top_level_modules("codegen") & {"yaml", "pydantic"})
