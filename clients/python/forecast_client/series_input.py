"""Read a series for the CLI: an inline list of numbers or one column of a CSV file.

Parsing only: whether the values make a valid history (non-empty, long
enough, its missing values in the window filled) is the gateway's call. A
missing value is NaN: "nan" anywhere, and in a CSV an empty cell or NA, N/A,
null (any case). A CSV's dates (`--date-column`) are ISO 8601 dates or
date-times, UTC unless they carry an offset.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from forecast_client.times import parse_time

__all__ = [
    "CsvSeries",
    "InputError",
    "parse_csv",
    "parse_history",
    "parse_names",
    "parse_values",
    "read_csv",
]

_SEPARATORS = re.compile(r"[,\s]+")
_MISSING = frozenset({"", "na", "n/a", "null"})  # CSV cells read as NaN (besides "nan")


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


@dataclass(frozen=True)
class CsvSeries:
    """A series read from a CSV: `values` (NaN where a cell is empty) and their `times`.

    `times` (UTC datetimes, one per value) is None without a date column;
    `ids` (each row's series id, for a long CSV of several series) is None
    without an id column.
    """

    values: list[float]
    times: list[datetime] | None = None
    ids: list[str] | None = None


def parse_csv(text: str, column: str | None = None) -> list[float]:
    """Return one column of CSV `text` as floats, in file order (oldest first).

    `column` names a header cell; without it the last column whose every data
    cell is a number or empty (and at least one a number) is used. The first
    row is a header when it holds `column`, or when some column is text in
    the first row and numbers below. Empty cells (and NA, N/A, null, nan)
    are NaN: missing values, for the gateway to fill (`--fill`) or to
    reject if the model would read them. Blank lines are skipped.
    """
    return read_csv(text, column).values


def read_csv(
    text: str,
    column: str | None = None,
    date_column: str | None = None,
    id_column: str | None = None,
) -> CsvSeries:
    """Return one column of CSV `text` (as `parse_csv`) and, with `date_column`, its dates.

    Every row needs a date in `date_column` (ISO 8601, UTC unless it has an
    offset); a row's value may be empty (NaN). Rows are sent in file order:
    whether the dates increase and fit a frequency is the gateway's call.
    With `id_column` (a long CSV holding several series), every row needs
    an id there, returned in `ids`; the column is never taken for values.
    """
    lines = text.removeprefix("\ufeff").splitlines()
    rows = [[cell.strip() for cell in row] for row in csv.reader(lines) if any(row)]
    if not rows:
        raise InputError("--csv", "the file has no rows")
    header = rows[0] if _is_header(rows, (column, date_column, id_column)) else None
    data = rows[1:] if header is not None else rows
    if not data:
        raise InputError("--csv", "the file has a header but no data rows")
    dates = _header_index(header, date_column, "--date-column")
    ids = _header_index(header, id_column, "--id-column")
    index = _column_index(header, data, column, exclude={dates, ids})
    label = header[index] if header is not None else f"column {index + 1}"
    first = 2 if header is not None else 1
    values = []
    for line, row in enumerate(data, start=first):
        cell = _cell(row, index)
        number = _to_value(cell)
        if number is None:
            raise InputError("--csv", f"line {line}, {label}: {cell!r} is not a number")
        values.append(number)
    times = None
    if dates is not None:
        times = [_date(row, dates, line) for line, row in enumerate(data, first)]
    if ids is None:
        return CsvSeries(values, times)
    return CsvSeries(values, times, [_id(row, ids, line) for line, row in enumerate(data, first)])


def _id(row: list[str], index: int, line: int) -> str:
    cell = _cell(row, index)
    if not cell:
        raise InputError("--id-column", f"line {line}: the series id is empty")
    return cell


def _date(row: list[str], index: int, line: int) -> datetime:
    cell = _cell(row, index)
    if not cell:
        raise InputError("--date-column", f"line {line}: the date is empty")
    try:
        return parse_time(cell, f"line {line}")
    except ValueError as error:
        raise InputError("--date-column", str(error)) from None


def _cell(row: list[str], index: int) -> str:
    return row[index] if index < len(row) else ""


def _to_float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def _to_value(cell: str) -> float | None:
    """A CSV cell as a number, NaN for a missing value, None for text."""
    return math.nan if cell.lower() in _MISSING else _to_float(cell)


def _is_values(cells: Sequence[str]) -> bool:
    """Every cell a number or missing, and at least one a number."""
    numbers = [_to_value(cell) for cell in cells]
    return all(n is not None for n in numbers) and any(
        cell.lower() not in _MISSING for cell in cells
    )


def _is_header(rows: list[list[str]], names: Sequence[str | None]) -> bool:
    first, rest = rows[0], rows[1:]
    if any(name is not None and name in first for name in names):
        return True
    for index, cell in enumerate(first):
        below = [_cell(row, index) for row in rest]
        if _to_value(cell) is None and (not rest or _is_values(below)):
            return True
    return False


def _header_index(header: list[str] | None, name: str | None, field: str) -> int | None:
    if name is None:
        return None
    if header is None:
        raise InputError(field, f"the file has no header row to find {name!r} in")
    if name not in header:
        raise InputError(field, f"{name!r} is not in the header {header}")
    return header.index(name)


def _column_index(
    header: list[str] | None,
    data: list[list[str]],
    column: str | None,
    *,
    exclude: set[int | None],
) -> int:
    given = _header_index(header, column, "--column")
    if given is not None:
        return given
    width = max(len(row) for row in data)
    for index in reversed(range(width)):
        if index not in exclude and _is_values([_cell(row, index) for row in data]):
            return index
    raise InputError("--csv", "no column holds only numbers; pick one with --column")
