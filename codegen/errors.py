"""Errors of code generation that do not need jinja2 to be named (``llmspec``'s ``main`` catches
them from the base install, where jinja2 may be missing)."""

from __future__ import annotations


class RenderError(RuntimeError):
    """The source could not be produced (template error or formatter failure)."""


__all__ = ["RenderError"]
