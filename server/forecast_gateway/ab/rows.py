"""The row handling the store's operations share: locking rows in key order, blobs, NULLs.

`lock_rows` creates, locks and reads a table's rows in one upsert, in the
order of their keys (the lock order of `ab.storage`); `lock_forecasts`
locks existing forecast rows in id order; `apply_moments` moves the running
sums of `moments` by a batch of deltas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecast_gateway.ab import aggregates
from forecast_gateway.ab.schema import Row, Transaction, decode_sums, encode_sums
from forecast_gateway.numerics import FloatArray

IN_LIST_MAX = 500
"""Most ids in one `IN (...)` list (SQLite allows 32,766 parameters a statement)."""


@dataclass(frozen=True)
class Table:
    """A table of rows that an operation creates if missing, then locks, reads and updates."""

    name: str
    keys: tuple[str, ...]
    values: tuple[str, ...]
    empty: tuple[object, ...]
    """The values of a row created empty."""


async def lock_rows(
    tx: Transaction, table: Table, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], Row]:
    """The values of the rows of `keys` (sorted), created empty where missing, locked in order.

    One upsert creates, locks and reads them: a SELECT ... FOR UPDATE locks
    no row that does not exist yet, and two transactions that both read a
    missing row and then wrote it would each write only their own change.
    The upsert's no-op update locks an existing row and waits for one
    another transaction is creating; its rows are taken in the order of
    `keys`, so every transaction locks a table's rows in one order.
    """
    columns = table.keys + table.values
    width = len(table.keys)
    first = table.values[0]
    per_statement = max(1, IN_LIST_MAX // len(columns))
    found: dict[tuple[Any, ...], Row] = {}
    for start in range(0, len(keys), per_statement):
        chunk = keys[start : start + per_statement]
        rows = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(chunk))
        for row in await tx.fetchall(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {rows} "
            f"ON CONFLICT ({', '.join(table.keys)}) DO UPDATE SET {first} = {table.name}.{first} "
            f"RETURNING {', '.join(columns)}",
            [value for key in chunk for value in (*key, *table.empty)],
        ):
            found[tuple(row[:width])] = row[width:]
    return found


async def lock_forecasts(tx: Transaction, lock_rows: str, ids: Iterable[str]) -> dict[str, Row]:
    """The existing rows of `ids`, locked in id order: every operation locks forecasts first."""
    ordered = sorted(ids)
    known: dict[str, Row] = {}
    for start in range(0, len(ordered), IN_LIST_MAX):
        chunk = ordered[start : start + IN_LIST_MAX]
        for row in await tx.fetchall(
            "SELECT forecast_id, model, experiment, comparable, naive_scale, actuals, unit "
            "FROM forecasts "
            f"WHERE forecast_id IN ({', '.join(['%s'] * len(chunk))}) ORDER BY forecast_id"
            + lock_rows,
            chunk,
        ):
            known[row[0]] = row
    return known


MOMENTS = Table(
    "moments",
    ("model", "experiment", "metric", "version_a", "version_b"),
    ("n", "total", "squares"),
    (0, b"", b""),
)


UNITS = Table(
    "unit_scores",
    ("model", "experiment", "version", "unit"),
    ("n", "total", "squares"),
    (0, b"", b""),
)


async def apply_moments(tx: Transaction, deltas: Sequence[aggregates.MomentDelta]) -> None:
    """Move the running sums (exact: `scoring.ExactSums`) by `deltas`; rows locked in key order.

    A sticky draw's deltas (`aggregates.UNIT_MASE`) move its unit's row in
    `unit_scores` first (units locked in key order, before `moments`), and
    the change of the unit's mean moves `aggregates.KEYED_MASE`.
    """
    units = [d for d in deltas if d.metric == aggregates.UNIT_MASE]
    if units:
        deltas = [d for d in deltas if d.metric != aggregates.UNIT_MASE]
        deltas += await _apply_units(tx, units)
    if not deltas:
        return
    keys = sorted({d.key for d in deltas})
    sums = {key: decode_sums(*row) for key, row in (await lock_rows(tx, MOMENTS, keys)).items()}
    for delta in deltas:
        sums[delta.key] = sums[delta.key].add(delta.value, delta.weight)
    await tx.executemany(
        "UPDATE moments SET n = %s, total = %s, squares = %s WHERE model = %s "
        "AND experiment = %s AND metric = %s AND version_a = %s AND version_b = %s",
        [(*encode_sums(sums[key]), *key) for key in keys],
    )


async def _apply_units(
    tx: Transaction, deltas: Sequence[aggregates.MomentDelta]
) -> list[aggregates.MomentDelta]:
    """Move the units' sums by `deltas`; the moves of their means (`aggregates.unit_means`)."""
    keys = sorted({d.key for d in deltas})
    rows = await lock_rows(tx, UNITS, [(m, e, v, u) for m, e, _, v, u in keys])
    before = {key: decode_sums(*rows[(m, e, v, u)]) for key in keys for m, e, _, v, u in (key,)}
    after, moves = aggregates.unit_means(before, deltas)
    await tx.executemany(
        "UPDATE unit_scores SET n = %s, total = %s, squares = %s WHERE model = %s "
        "AND experiment = %s AND version = %s AND unit = %s",
        [(*encode_sums(after[key]), m, e, v, u) for key in keys for m, e, _, v, u in (key,)],
    )
    return moves


def array(blob: bytes) -> FloatArray:
    """A float64 blob as an array."""
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


def sql_floats(*values: float) -> tuple[float | None, ...]:
    """NULL for an undefined score (NaN): SQL has no NaN in SQLite, and NULL reads back as NaN."""
    return tuple(value if math.isfinite(value) else None for value in values)
