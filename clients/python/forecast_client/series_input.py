"""Read a series for the CLI: an inline list of numbers or one column of a CSV file.

Parsing only: whether the values make a valid history (non-empty, finite, long
enough) is the gateway's call, so "nan" parses here and is rejected there.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence

__all__ = ["InputError", "parse_csv", "parse_history", "parse_names", "parse_values"]

_SEPARATORS = re.compile(r"[,\s]+")


class InputError(Exception):
    """The CLI's input cannot be read; `field` names the offending option."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def parse_history(text: str) -> list[float]:
    """Parse "1, 2.5 3" (commas and/or whitespace) into floats; "" is an empty series."""
    return parse_values(text, "--history")


def parse_values(text: str, field: str) -> list[float]:
    """Parse a list of numbers like `parse_history`; errors name the option `field`."""
    values = []
    for position, token in enumerate(t for t in _SEPARATORS.split(text.strip()) if t):
        number = _to_float(token)
        if number is None:
            raise InputError(field, f"value {position + 1} ({token!r}) is not a number")
        values.append(number)
    return values


def parse_names(text: str) -> list[str]:
    """Split "1,2" or "1 2" into ["1", "2"] (e.g. a list of versions); "" is no names."""
    return [token for token in _SEPARATORS.split(text.strip()) if token]


def parse_csv(text: str, column: str | None = None) -> list[float]:
    """Return one column of CSV `text` as floats, in file order (oldest first).

    `column` names a header cell; without it the last column whose every data
    cell is a number is used. The first row is a header when it holds
    `column`, or when some column is text in the first row and numbers below.
    """
    lines = text.removeprefix("\ufeff").splitlines()
    rows = [[cell.strip() for cell in row] for row in csv.reader(lines) if any(row)]
    if not rows:
        raise InputError("--csv", "the file has no rows")
    header = rows[0] if _is_header(rows, column) else None
    data = rows[1:] if header is not None else rows
    if not data:
        raise InputError("--csv", "the file has a header but no data rows")
    index = _column_index(header, data, column)
    label = header[index] if header is not None else f"column {index + 1}"
    values = []
    for line, row in enumerate(data, start=2 if header is not None else 1):
        cell = row[index] if index < len(row) else ""
        number = _to_float(cell)
        if number is None:
            raise InputError("--csv", f"line {line}, {label}: {cell!r} is not a number")
        values.append(number)
    return values


def _to_float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def _is_numeric(cells: Sequence[str]) -> bool:
    return all(_to_float(cell) is not None for cell in cells)


def _is_header(rows: list[list[str]], column: str | None) -> bool:
    first, rest = rows[0], rows[1:]
    if column is not None and column in first:
        return True
    for index, cell in enumerate(first):
        below = [row[index] if index < len(row) else "" for row in rest]
        if _to_float(cell) is None and _is_numeric(below):
            return True
    return False


def _column_index(header: list[str] | None, data: list[list[str]], column: str | None) -> int:
    if column is not None:
        if header is None:
            raise InputError("--column", f"the file has no header row to find {column!r} in")
        if column not in header:
            raise InputError("--column", f"{column!r} is not in the header {header}")
        return header.index(column)
    width = max(len(row) for row in data)
    for index in reversed(range(width)):
        if _is_numeric([row[index] if index < len(row) else "" for row in data]):
            return index
    raise InputError("--csv", "no column holds only numbers; pick one with --column")
