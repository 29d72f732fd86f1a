"""The storage interface the A/B store uses, and the choice of backend from `store_url`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from forecast_gateway.ab.records import ActualsReport, ExperimentInfo, Record
from forecast_gateway.ab.report import ModelAggregates
from forecast_gateway.ab.sql import Bounds, CalibrationPools, SqlStorage
from forecast_gateway.numerics import FloatArray
from forecast_gateway.store_urls import is_postgres, sqlite_path


class Storage(Protocol):
    """Where forecasts, scores and running aggregates live (SQLite or PostgreSQL)."""

    def describe(self) -> str:
        """Where the data lives, for logs: never a password."""
        ...

    async def open(self) -> None:
        """Connect and bring the schema to the current version."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...

    async def write(self, records: Sequence[Record]) -> None:
        """Write a batch of records (one transaction), then prune to the bounds."""
        ...

    async def report_actuals(
        self, forecast_id: str, actuals: FloatArray, offset: int
    ) -> ActualsReport | None:
        """Store actuals and rescore the forecast; None for an id the store does not hold."""
        ...

    async def aggregates(self, model: str, experiment: str) -> ModelAggregates:
        """One experiment's running totals (O(versions))."""
        ...

    async def experiments(self, model: str) -> list[ExperimentInfo]:
        """The experiments of `model` ("" = every model), newest first within a model."""
        ...

    async def calibration_pools(
        self, known: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], CalibrationPools]:
        """The calibration pools of every (model, version) whose revision is not `known`'s."""
        ...


def open_storage(
    url: str,
    bounds: Bounds,
    *,
    default_path: str = "",
    password_file: str = "",
    clock: Callable[[], float] = time.time,
) -> Storage:
    """The storage a store URL selects (not yet opened); the password is read from its file here."""
    if is_postgres(url):
        from forecast_gateway.ab.postgres import PostgresBackend  # psycopg only when used

        password = Path(password_file).read_text().rstrip("\r\n") if password_file else None
        return SqlStorage(PostgresBackend(url.strip(), password), bounds, clock)
    from forecast_gateway.ab.sqlite import SQLiteBackend

    return SqlStorage(SQLiteBackend(sqlite_path(url, default_path)), bounds, clock)
