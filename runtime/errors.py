"""The one base of the errors that bad input raises, the exit codes, and a refused request.

Every error of ours that a user's input can cause (a spec, an artifact, a prompt, a key, a
corpus, an output that cannot be written) derives from :class:`LlmspecError` as well as from
the built-in it always was (``ValueError``, ``OSError``, ...), so ``llmspec``'s ``main`` catches
them in one place and prints one line. It lives here because ``runtime`` imports nothing of
``llmspec``; :mod:`llmspec.errors` re-exports it. :class:`RuntimeInputError` is here because
the models, the generation loop and the tokenizer all raise it.
"""

from __future__ import annotations

EXIT_OK = 0  # success
EXIT_BAD_INPUT = 1  # the input was bad: a spec, an artifact, a prompt, ...
EXIT_USAGE = 2  # the command line itself was wrong (argparse's own status)


class LlmspecError(Exception):
    """Bad input, reported without a traceback; ``exit_code`` is the command line's status."""

    exit_code: int = EXIT_BAD_INPUT


class RuntimeInputError(ValueError, LlmspecError):
    """A request the runtime refuses before running anything; the message says what to fix."""


__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_USAGE", "LlmspecError", "RuntimeInputError"]
