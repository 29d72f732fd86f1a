"""`python -m bench.claims --smoke` on both backends: exactly once, and the tables (no timings)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench.claims import KIND, OWNER, REQUEST, TTL_S, Database, opened, verify
from forecast_gateway.operations import OperationStore
from tests.conftest import ROOT
from tools.local_postgres import LocalPostgres

pytestmark = pytest.mark.functional


def rows(table: str, columns: int) -> list[list[str]]:
    """The data rows of the markdown tables with `columns` columns."""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    return [r for r in cells if len(r) == columns and not set(r[-1]) <= set("-:")]


def test_smoke_claims_every_operation_exactly_once(postgres: LocalPostgres) -> None:
    url = postgres.create_database(f"claims_{uuid.uuid4().hex[:12]}")
    done = subprocess.run(
        [sys.executable, "-m", "bench.claims", "--smoke", "--postgres-url", url,
         "--password-file", str(postgres.password_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    claims = rows(done.stdout, 12)[1:]  # the header row first
    waits = rows(done.stdout, 7)[1:]
    cells = {(r[0], r[1], int(r[2])) for r in claims}
    assert cells == {
        (backend, mode, replicas)
        for backend in ("sqlite", "postgresql")
        for mode, replicas in (("tasks", 1), ("tasks", 4), ("processes", 4))
    }, done.stdout
    assert all(r[3] == "200" and r[-1] == "yes" for r in claims), done.stdout
    assert all(float(r[4].replace(",", "")) > 0 for r in claims), done.stdout
    assert len(waits) == 4 and all(r[2] == "2" and r[-1] == "yes" for r in waits), done.stdout
    woken = [r for r in waits if "wakes" in r[1]]
    assert {r[0] for r in woken} == {"sqlite", "postgresql"}, done.stdout
    assert re.search(r"load average [\d.]+ before", done.stdout), done.stdout


async def test_the_check_reports_a_double_claim_and_an_unfinished_operation(
    tmp_path: Path,
) -> None:
    storage = await opened(Database("sqlite", f"sqlite:///{tmp_path / 'store.sqlite3'}"))
    store = OperationStore(storage)
    first = (await store.create(KIND, OWNER, REQUEST, 1)).name
    second = (await store.create(KIND, OWNER, REQUEST, 1)).name
    claimed = await store.claim("r", 60.0, TTL_S)
    assert claimed is not None and claimed[0].name == first
    assert await store.finish(first, "r", TTL_S, result=b"r")
    problems = await verify(storage, {"r": [first, first]}, {first, second})
    await storage.close()
    assert any("1 claimed twice" in p for p in problems), problems
    assert any("1 never claimed" in p for p in problems), problems
    assert any(second in p and "not done once" in p for p in problems), problems
