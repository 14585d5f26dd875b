"""Argument types shared by the command line's verbs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(least: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``least``; anything else is a usage
    error (exit status 2) that says what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


positive = whole_number(1)
non_negative = whole_number(0)


def positive_fraction(text: str) -> float:
    """An argparse ``type``: a number above 0 and at most 1 (a relative tolerance, an MFU)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value}")
    return value


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads`` for the verbs that open ONNX Runtime sessions."""
    parser.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="where to run: CUDA when it really works (auto, the default), cuda, or cpu",
    )
    parser.add_argument(
        "--threads", type=positive, metavar="N", help="ONNX Runtime intra-op threads"
    )


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data PATH...`` for the verbs that read a text corpus."""
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, or directories of them",
    )
