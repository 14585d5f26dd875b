"""The command line is one table of verbs, and bad input has one error base caught in one place."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import codegen
import llmspec
import runtime
from llmspec.cli import VERBS, main, verb_module
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, LlmspecError, bad_input_errors

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_in_the_table_has_help_that_exits_0(verb: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main([verb, "--help"])
    assert exit.value.code == EXIT_OK
    assert f"usage: llmspec {verb}" in capsys.readouterr().out


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_module_exports_add_arguments_and_run(verb: str) -> None:
    module = verb_module(verb)
    assert module.__name__.startswith("llmspec.cli.")
    assert list(inspect.signature(module.add_arguments).parameters) == ["parser"]
    assert list(inspect.signature(module.run).parameters) == ["args"]


def test_the_table_lists_every_verb_module_of_the_package() -> None:
    helpers = {"arguments", "inference"}  # shared argument types; what artifact verbs share
    modules = {m.name for m in pkgutil.iter_modules([str(ROOT / "llmspec" / "cli")])}
    assert modules - helpers == {module for module, _ in VERBS.values()}


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_no_module_outside_llmspec_cli_imports_argparse() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("llmspec", "runtime", "codegen")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "cli" not in path.relative_to(ROOT / package).parts[:1] and _imports_argparse(path)
    ]
    assert offenders == []


def _error_classes() -> list[type[BaseException]]:
    classes: dict[str, type[BaseException]] = {}
    for package in (llmspec, runtime, codegen):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith(".__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, Exception)
                    and not issubclass(value, Warning)
                    and value.__module__ == info.name
                    and not name.startswith("_")
                ):
                    classes[f"{info.name}.{name}"] = value
    return [classes[k] for k in sorted(classes)]


def test_every_error_class_of_ours_derives_from_the_base_or_is_in_the_one_caught_tuple() -> None:
    classes = _error_classes()
    assert len(classes) >= 20
    caught = bad_input_errors()
    outside = [f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, caught)]
    assert outside == []
    # what main catches beside the base: only errors of modules that cannot import it
    for extra in caught[1:]:
        assert not issubclass(extra, LlmspecError)
        assert extra.__module__.startswith(("codegen.", "runtime.decoding"))


def test_error_classes_keep_their_builtin_bases() -> None:
    from llmspec.exporter.graphs import ExportError
    from llmspec.files import OutputError
    from runtime.session import DeviceError

    assert issubclass(llmspec.SpecError, ValueError)
    assert issubclass(runtime.ArtifactError, ValueError)
    assert issubclass(OutputError, OSError)
    assert issubclass(ExportError, RuntimeError)
    assert issubclass(DeviceError, RuntimeError)
    for cls in (llmspec.SpecError, runtime.ArtifactError, OutputError, ExportError, DeviceError):
        assert issubclass(cls, LlmspecError)


def test_exit_codes_are_defined_once() -> None:
    assert (EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE) == (0, 1, 2)
    assert LlmspecError.exit_code == EXIT_BAD_INPUT
    definitions = [
        str(path.relative_to(ROOT))
        for package in ("llmspec", "runtime", "codegen")
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign)
        for target in node.targets
        for name in ast.walk(target)
        if isinstance(name, ast.Name) and name.id.startswith("EXIT_")
    ]
    assert definitions == ["runtime/errors.py"] * 3


def test_main_reports_an_error_of_the_base_in_one_line_with_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import llmspec.cli.schema as schema

    class Refused(LlmspecError):
        exit_code = EXIT_USAGE

    def refuse(args: object) -> int:
        raise Refused("the schema is not for today; try tomorrow")

    monkeypatch.setattr(schema, "run", refuse)
    assert main(["schema"]) == EXIT_USAGE
    assert capsys.readouterr().err == "llmspec schema: the schema is not for today; try tomorrow\n"


def test_under_torchrun_only_rank_0_reports_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import llmspec.cli.schema as schema

    def refuse(args: object) -> int:
        raise runtime.ArtifactError("bad")

    monkeypatch.setattr(schema, "run", refuse)
    monkeypatch.setenv("RANK", "1")
    assert main(["schema"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["schema"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "llmspec schema: bad\n"
