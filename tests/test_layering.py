"""DESIGN.md's layering: imports go one way, and the deployable runtime stays light."""

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
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


# ---------------------------------------------------------------------------------------------
# The stages of llmspec/ and which may import which. The pipeline reads from the tree:
# spec -> estimates -> lower -> codegen -> builder -> trainer -> exporter -> inspect -> runtime,
# with the tokenizer, the model-source resolver and the importers beside it and the command
# line on top. Every part may use runtime (the artifact format, the bounded reader), codegen
# only where it says so, and the two foundations below (errors, atomic files). A name in an
# allowed set is a part or one module of a part (evaluation reads corpora and batches them as
# training does, with llmspec.trainer's numpy-only data, objectives and settings, never its loop).

FOUNDATION = {"llmspec.errors", "llmspec.files", "runtime"}
STAGES: dict[str, set[str]] = {
    "llmspec": {"llmspec.spec"},  # the public API; the compiling entry points are lazy
    "llmspec.__main__": {"llmspec.cli"},
    "llmspec.errors": {"codegen.errors", "codegen.plan"},  # codegen's errors are bad input too
    "llmspec.files": set(),
    "llmspec.spec": set(),
    "llmspec.estimates": {"llmspec.spec"},
    "llmspec.tokenizer": {"llmspec.spec"},
    "llmspec.lower": {"llmspec.spec", "codegen"},
    "llmspec.sources": {"llmspec.spec", "llmspec.tokenizer"},
    "llmspec.builder": {"llmspec.spec", "llmspec.estimates", "llmspec.lower", "codegen"},
    "llmspec.trainer": {
        "llmspec.spec",
        "llmspec.estimates",
        "llmspec.tokenizer",
        "llmspec.sources",
        "llmspec.builder",
    },
    "llmspec.exporter": {
        "llmspec",  # __version__, for the manifest
        "llmspec.spec",
        "llmspec.estimates",
        "llmspec.tokenizer",
        "llmspec.sources",
        "llmspec.builder",
    },
    "llmspec.importers": {
        "llmspec.spec",
        "llmspec.tokenizer",
        "llmspec.sources",  # export-hf starts from a spec, a run or an import
        "llmspec.builder",
    },
    "llmspec.inspect": {
        "llmspec.spec",
        "llmspec.tokenizer",
        "llmspec.sources",
        "llmspec.builder",
        "llmspec.trainer.data",
        "llmspec.trainer.objectives",
        "llmspec.trainer.settings",
    },
    "llmspec.prompts": set(),
    "llmspec.cli": {"*"},
}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _part(module: str, parts: Iterable[str]) -> str | None:
    """The longest name in ``parts`` that is ``module`` or a package holding it."""
    found = [p for p in parts if module == p or module.startswith(p + ".")]
    return max(found, key=len) if found else None


def _our_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("llmspec", "codegen", "runtime"):
                yield node.lineno, name


def test_every_module_of_llmspec_belongs_to_a_stage():
    loose = [
        _module_name(path)
        for path in sorted((ROOT / "llmspec").rglob("*.py"))
        if _part(_module_name(path), STAGES) is None
    ]
    assert loose == [], "add the new part to STAGES, with what it may import"


def test_stages_import_only_the_stages_before_them():
    offences = []
    for path in sorted((ROOT / "llmspec").rglob("*.py")):
        module = _module_name(path)
        part = _part(module, STAGES)
        assert part is not None
        allowed = STAGES[part] | FOUNDATION | {part}
        if "*" in allowed:
            continue
        for line, name in _our_imports(ast.parse(path.read_text())):
            if _part(name, allowed) is None and name != part:
                where = f"{path.relative_to(ROOT)}:{line}"
                offences.append(f"{where} imports {name}; {part} may import {sorted(allowed)}")
    assert offences == []


def test_the_stage_contract_catches_a_sideways_import(tmp_path):
    """The check above is not vacuous: an import the contract forbids is found."""
    tree = ast.parse("from llmspec.exporter.pipeline import export\n")
    names = [name for _, name in _our_imports(tree)]
    allowed = STAGES["llmspec.inspect"] | FOUNDATION
    assert names == ["llmspec.exporter.pipeline"]
    assert _part(names[0], allowed) is None
    assert _part("llmspec.trainer.data", allowed) == "llmspec.trainer.data"
    assert _part("llmspec.trainer.loop", allowed) is None


# Function-level imports are kept only for what is heavy or optional: a module-level import of
# these would make `import llmspec` (or the runtime) load them for every command.
HEAVY_OR_OPTIONAL = {
    "torch",
    "onnx",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "jinja2",
    "transformers",
    "safetensors",
    "matplotlib",
    "cryptography",
    "ml_dtypes",
    "hypothesis",
    "tokenizers",
    "ruff",
    "starlette",  # the server's web stack and its test clients (llmspec[serve], dev)
    "uvicorn",
    "prometheus_client",
    "openai",
    "httpx",
    "llguidance",
    "peft",  # LoRA fine-tuning (llmspec[finetune])
}
# Function-level imports that break an import cycle, each with its reason.
CYCLES = {
    ("llmspec.spec.sections", "llmspec.spec.rules"): "the rules read ModelSpec's fields",
    ("runtime.artifact", "runtime.signing"): "signing reads the artifact's file names",
}


def _top_level_imports(tree: ast.Module) -> set[str]:
    """What importing the module imports, TYPE_CHECKING blocks left out."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                pending += handler.body
    return names


def _ours() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in ("llmspec", "codegen", "runtime")
        for path in (ROOT / package).rglob("*.py")
    }


def _loads_heavy(module: str, ours: dict[str, Path], seen: set[str]) -> bool:
    """Whether importing ``module`` (one of ours) loads a heavy or optional package."""
    if module in seen or module not in ours:
        return False
    seen.add(module)
    for name in _top_level_imports(ast.parse(ours[module].read_text())):
        if name.split(".")[0] in HEAVY_OR_OPTIONAL or _loads_heavy(name, ours, seen):
            return True
    return False


def _function_level_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in function.body:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    for alias in inner.names:
                        yield inner.lineno, alias.name
                elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    yield inner.lineno, inner.module


def test_function_level_imports_are_for_heavy_or_optional_packages_only():
    ours = _ours()
    offences = set()
    for module, path in sorted(ours.items()):
        for line, name in _function_level_imports(ast.parse(path.read_text())):
            if name.split(".")[0] in HEAVY_OR_OPTIONAL or (module, name) in CYCLES:
                continue
            if _loads_heavy(name, ours, set()):
                continue
            offences.add(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    assert sorted(offences) == [], "move these imports to the top of their modules"
