"""The corpus of invalid specs: each file under ``invalid/`` fails with the messages it expects.

Every case starts with one or more ``# expect: <substring>`` lines; each substring must appear
in the :class:`SpecError` text. Most give ``:line:col: field.path: message`` (line numbers count
the header lines too), and the first gives the number of problems, so that a case also fails
when a spec grows an unrelated complaint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmspec import SpecError, load_spec

CORPUS = Path(__file__).parent / "invalid"
CASES = sorted(CORPUS.glob("*.yaml"))
# Cases whose only problem has no place in the text (an empty file has no line to point at).
UNLOCATED = {"yaml-empty"}
EXPECT = "# expect:"


def expectations(path: Path) -> list[str]:
    # Read as bytes: one case is deliberately not UTF-8 below its (ASCII) header.
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    return [line.removeprefix(EXPECT).strip() for line in lines if line.startswith(EXPECT)]


def test_the_corpus_covers_many_cases() -> None:
    assert len(CASES) >= 45


@pytest.mark.parametrize("path", CASES, ids=lambda path: path.stem)
def test_invalid_spec_reports_every_expected_message(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    missing = [e for e in expected if e not in text]
    assert not missing, f"missing {missing} in:\n{text}"


@pytest.mark.parametrize("path", CASES, ids=lambda path: path.stem)
def test_invalid_spec_problems_are_located_and_readable(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    assert problems
    for problem in problems:
        assert problem.source == str(path)
        assert problem.message.strip()
        if path.stem not in UNLOCATED:
            assert problem.line > 0 and problem.column > 0, str(problem)
        # pydantic's own wording and links never reach the user.
        assert "errors.pydantic.dev" not in problem.message
        assert "Input should be" not in problem.message
    assert [p.line for p in problems] == sorted(p.line for p in problems)
