"""Validation of state-machine command fields: every problem is one message naming the field.

Commands arrive from the network (through the log), so the state machine checks every field
it reads before it changes anything; `Fields` raises `Bad`, which apply turns into
`{"ok": False, "error": ...}`.
"""

from __future__ import annotations

import math
from typing import Any

Result = dict[str, Any]


class Bad(Exception):
    """Invalid command: raised only while validating, before any mutation."""


MISSING = object()


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """Typed access to a command's fields; every failure names the field.

    A field that is absent or None takes ``default``; without a default it is required.
    """

    def __init__(self, where: str, data: dict[str, Any]) -> None:
        self.where = where
        self.data = data

    def _get(self, name: str, default: Any) -> tuple[Any, bool]:
        """(value, present); raises for a required field that is missing."""
        value = self.data.get(name)
        if value is not None:
            return value, True
        if default is MISSING:
            raise Bad(f"{self.where}: field '{name}' is missing")
        return default, False

    def _wrong(self, name: str, what: str, value: Any) -> Bad:
        return Bad(f"{self.where}: field '{name}' must be {what} (got {short(value)})")

    def text(self, name: str, default: Any = MISSING, empty: bool = False) -> Any:
        value, present = self._get(name, default)
        if present and (not isinstance(value, str) or (not empty and not value)):
            raise self._wrong(name, "a string" if empty else "a non-empty string", value)
        return value

    def integer(self, name: str, minimum: int | None = None, default: Any = MISSING) -> Any:
        value, present = self._get(name, default)
        if present and (not isinstance(value, int) or isinstance(value, bool)
                        or (minimum is not None and value < minimum)):
            bound = f" ≥ {minimum}" if minimum is not None else ""
            raise self._wrong(name, "an integer" + bound, value)
        return value

    def number(self, name: str, minimum: float | None = None, positive: bool = False,
               default: Any = MISSING) -> Any:
        value, present = self._get(name, default)
        if not present:
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and (minimum is None or value >= minimum) \
            and (not positive or value > 0)
        if not ok:
            what = "a positive number" if positive else (
                f"a number ≥ {minimum:g}" if minimum is not None else "a number")
            raise self._wrong(name, what, value)
        return float(value)

    def flag(self, name: str, default: Any = MISSING) -> Any:
        value, present = self._get(name, default)
        if present and not isinstance(value, bool):
            raise self._wrong(name, "true or false", value)
        return value

    def items(self, name: str, default: Any = MISSING) -> list[Any]:
        value, present = self._get(name, default)
        if present and not isinstance(value, (list, tuple)):
            raise self._wrong(name, "a list", value)
        return list(value)

    def texts(self, name: str, default: Any = MISSING) -> list[str]:
        value = self.items(name, default)
        if not all(isinstance(v, str) and v for v in value):
            raise self._wrong(name, "a list of non-empty strings", value)
        return value

    def text_map(self, name: str, default: Any = MISSING) -> dict[str, str]:
        value, present = self._get(name, default)
        if present and (not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            raise self._wrong(name, "a map of string to string", value)
        return dict(value)

    def cpv(self, name: str) -> str:
        value = self.text(name)
        cat, _, pkg = value.partition("/")
        if not cat or not pkg or "/" in pkg or any(c.isspace() for c in value):
            raise self._wrong(name, "a 'category/package-version'", value)
        return value


def error_result(message: str, **flags: Any) -> Result:
    return {"ok": False, "error": message, **flags}
