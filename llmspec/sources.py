"""One resolver for the verbs that start from a model: a spec, a model or run directory, or an
artifact.

``llmspec export``, ``llmspec train`` and ``llmspec attention`` take "a model" as a spec file
(or, from Python, a spec object), a directory from ``llmspec import-hf`` or ``llmspec train``,
or an artifact: every one of those directories holds ``spec.yaml``, usually
``weights.safetensors`` and often ``tokenizer.json``, under the artifact's file names
(:mod:`runtime.artifact`). :func:`resolve_source` turns each into a :class:`ModelSource`;
a directory that holds no spec is a :class:`NoSpecInDirectory`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmspec.errors import LlmspecError
from llmspec.spec.loading import load_spec
from llmspec.spec.sections import ModelSpec
from runtime import artifact as fmt

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class NoSpecInDirectory(ValueError, LlmspecError):
    """A directory given as a model holds no ``spec.yaml``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"{directory}: a model directory needs {fmt.SPEC} (and {fmt.WEIGHTS}); "
            "pass a spec file or a directory from llmspec import-hf / llmspec train"
        )
        self.directory = directory


@dataclass(frozen=True)
class ModelSource:
    """Where a model's spec, weights and tokenizer come from."""

    spec: ModelSpec
    directory: Path  # the spec's relative paths (corpora, tokenizer files) resolve against it
    weights: Path | None  # None: the model starts from freshly initialized weights
    tokenizer_file: Path | None  # a directory's own tokenizer.json, if it has one

    def tokenizer(self, spec: ModelSpec | None = None) -> Tokenizer:
        """The tokenizer for ``spec`` (default: the source's): the directory's
        ``tokenizer.json`` checked against the spec, else the one the spec names.
        A tokenizer that does not fit is a :class:`~llmspec.tokenizer.TokenizerMismatch`."""
        from llmspec.tokenizer import check_fits, load_for_spec, read_tokenizer

        spec = spec or self.spec
        if self.tokenizer_file is None:
            return load_for_spec(spec, self.directory)
        tokenizer = read_tokenizer(self.tokenizer_file)
        check_fits(tokenizer, spec)
        return tokenizer


def resolve_source(
    source: ModelSpec | str | os.PathLike[str], weights: str | os.PathLike[str] | None = None
) -> ModelSource:
    """The model ``source`` names; ``weights``, when given, replaces its weights.

    A spec object resolves against the working directory, a spec file against its folder; a
    directory must hold ``spec.yaml`` (:class:`NoSpecInDirectory` otherwise), and its
    ``weights.safetensors`` and ``tokenizer.json`` are used when present. A spec file that
    cannot be read or is invalid raises :class:`~llmspec.errors.SpecError`."""
    given = Path(weights) if weights else None
    if isinstance(source, ModelSpec):
        return ModelSource(source, Path.cwd(), given, None)
    path = Path(source)
    if path.is_dir():
        spec_path = path / fmt.SPEC
        if not spec_path.is_file():
            raise NoSpecInDirectory(path)
        found, tokenizer = path / fmt.WEIGHTS, path / fmt.TOKENIZER
        return ModelSource(
            load_spec(spec_path),
            path,
            given or (found if found.is_file() else None),
            tokenizer if tokenizer.is_file() else None,
        )
    return ModelSource(load_spec(path), path.parent, given, None)
