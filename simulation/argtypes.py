"""argparse types shared by the simulation command lines: a bad value is one line of usage
error (argparse's), never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` with its ValueError (whose message says what is wrong) as a usage error."""
    def run(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return run


def positive(kind: type) -> Callable[[str], Any]:
    """A number of ``kind`` greater than 0."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text})")
        return value
    return parse
