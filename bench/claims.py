"""Claiming queued operations (SKIP LOCKED on PostgreSQL): claims/s, claim latency, exactly-once.

    python -m bench.claims                  # ~1.5 min on 2 cores
    python -m bench.claims --smoke          # ~10 s

For each backend and replica count R: N queued operations, then R replicas
loop claim -> finish until the queue is empty. Each replica is an
OperationStore over its own Storage (its own connection pool, or its own
SQLite connection and thread), as separate gateway processes would have. The
replicas run as tasks of this one asyncio process (their Python shares one
core) and, for R > 1, also as processes of their own. A second table times
the wait from create to claim through the gateway's OperationRunner polling
(poll_s 1 s), with and without `wake()` on the creating replica.

On PostgreSQL, pg_stat_activity is sampled every 5 ms during a cell: which
call waited on which for a lock. Every cell is checked from the table: each
operation claimed exactly once (one attempt), done, with the result of the
replica that claimed it; the command exits 1 otherwise. PostgreSQL runs on a
throwaway local server (tools/local_postgres.py) unless --postgres-url names
an empty database of its own.
Figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from bench.services import free_port
from forecast_gateway.ab import Bounds, Storage, Transaction
from forecast_gateway.ab.storage import open_storage
from forecast_gateway.operations import Job, OperationRunner, OperationStore, Progress, State
from tools.local_postgres import LocalPostgres

OWNER = "bench.claims"
KIND = "bench"
REQUEST = b"x" * 64
LEASE_S = 300.0
"""Longer than any cell: no lease runs out, so a second claim of a row is a defect."""
TTL_S = 3600.0
POLL_S = 1.0
"""OperationRunner's default poll interval, the one the gateway runs with."""
MAX_EMPTY = 10_000
"""Empty claims a replica tolerates while rows are still queued before it gives up."""
START_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 600.0
MODES = ("tasks", "processes")
LOCK_SAMPLE_S = 0.005
BOUNDS = Bounds(max_forecasts=1000, max_age_s=3600.0)


class RetryCounter:
    """A structlog processor: counts the store's retried transactions, drops info lines.

    A retry is a deadlock or serialization failure rolled back and run again
    (`Storage._retrying`): the sign of replicas getting in each other's way.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Count, then keep only warnings and errors (stderr; stdout is the table)."""
        if event.get("event") == "store_transaction_retried":
            self.count += 1
        if method in ("debug", "info"):
            raise structlog.DropEvent
        return event


RETRIES = RetryCounter()


def quiet_logs() -> None:
    """The store's and runner's log lines: counted (retries), warnings to stderr."""
    structlog.configure(
        processors=[RETRIES, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


@dataclass(frozen=True)
class Database:
    """Where a cell's store lives: a store URL and its password file ("" for none)."""

    backend: str
    url: str
    password_file: str = ""


@dataclass
class Replica:
    """One claiming replica and what it saw (picklable: a replica process sends it back)."""

    name: str
    claimed: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    empty: int = 0
    """Claims that returned None while rows were still queued."""
    lost: int = 0
    """finish() calls that found the lease no longer this replica's."""
    retried: int = 0
    """Transactions its process retried (processes only; tasks share one count)."""
    began: float = 0.0
    ended: float = 0.0
    """time.monotonic() around its drain: one clock for every process of the host."""


@dataclass(frozen=True)
class ClaimCell:
    """One backend, replica count and way of running the replicas."""

    backend: str
    mode: str
    replicas: int
    operations: int
    claims_per_s: float
    p50_ms: float
    p99_ms: float
    empty: int
    per_replica: tuple[int, int]
    retried: int
    lock_waits: LockWaits | None
    """None on SQLite."""
    problems: tuple[str, ...]


@dataclass
class LockWaits:
    """What the pg_stat_activity samples of one cell saw."""

    samples: int = 0
    seen: int = 0
    """Samples in which some session waited on a lock."""
    events: Counter[str] = field(default_factory=Counter)
    """Waiting sessions by their call, the call they wait on, and the lock (transactionid...)."""


@dataclass(frozen=True)
class WaitCell:
    """Create-to-claim waits through the runner's polling."""

    backend: str
    how: str
    waits_s: tuple[float, ...]
    by_creator: int
    problems: tuple[str, ...]


async def opened(database: Database) -> Storage:
    """A Storage of its own on `database` (a pool, or a SQLite connection), migrated."""
    storage = open_storage(database.url, BOUNDS, password_file=database.password_file)
    await storage.open()
    return storage


async def count_rows(storage: Storage, state: State | None = None) -> int:
    """Rows of the operations table (of one state)."""

    async def count(tx: Transaction) -> int:
        if state is None:
            row = await tx.fetchone("SELECT COUNT(*) FROM operations")
        else:
            row = await tx.fetchone(
                "SELECT COUNT(*) FROM operations WHERE state = %s", (state.value,)
            )
        return int(row[0]) if row else 0

    return await storage.transact(count, write=False)


async def delete_own(storage: Storage) -> None:
    """Remove the bench's operations, so the next cell starts on an empty table."""

    async def remove(tx: Transaction) -> None:
        await tx.execute("DELETE FROM operations WHERE owner = %s", (OWNER,))

    await storage.transact(remove, write=True)


async def verify(
    storage: Storage, claimed_by: dict[str, list[str]], created: set[str]
) -> list[str]:
    """What breaks exactly-once: in the replicas' own records and in the table."""
    problems: list[str] = []
    counts = Counter(name for names in claimed_by.values() for name in names)
    twice = sorted(name for name, times in counts.items() if times > 1)
    never = sorted(created - counts.keys())
    unknown = sorted(counts.keys() - created)
    for label, names in (("claimed twice", twice), ("never claimed", never), ("unknown", unknown)):
        if names:
            problems.append(f"{len(names)} {label}, e.g. {names[0]}")
    claimer = {name: replica for replica, names in claimed_by.items() for name in names}

    async def read(tx: Transaction) -> list[tuple[Any, ...]]:
        return await tx.fetchall(
            "SELECT name, state, attempts, result FROM operations WHERE owner = %s", (OWNER,)
        )

    rows = await storage.transact(read, write=False)
    if len(rows) != len(created):
        problems.append(f"the table has {len(rows)} operations, {len(created)} were created")
    wrong = [
        str(name)
        for name, state, attempts, result in rows
        if state != State.DONE.value
        or int(attempts) != 1
        or bytes(result or b"") != claimer.get(str(name), "").encode()
    ]
    if wrong:
        problems.append(f"{len(wrong)} rows not done once by their claimer, e.g. {wrong[0]}")
    return problems


async def drain(replica: Replica, store: OperationStore) -> None:
    """Claim and finish until a claim finds nothing and no row is queued."""
    replica.began = time.monotonic()
    while True:
        began = time.perf_counter()
        claimed = await store.claim(replica.name, LEASE_S, TTL_S)
        replica.latencies_s.append(time.perf_counter() - began)
        if claimed is None:
            # None with rows still queued: each of them was locked by another
            # replica's claim in flight (SKIP LOCKED), or a defect; claim again.
            if replica.empty >= MAX_EMPTY or not await count_rows(store.storage, State.QUEUED):
                break
            replica.empty += 1
            continue
        name = claimed[0].name
        replica.claimed.append(name)
        ended = await store.finish(name, replica.name, TTL_S, result=replica.name.encode())
        replica.lost += not ended
    replica.ended = time.monotonic()


async def drain_in_tasks(database: Database, replicas: int) -> list[Replica]:
    """The replicas as tasks of this process, each with a Storage of its own."""
    storages = [await opened(database) for _ in range(replicas)]
    crew = [Replica(f"replica-{index}") for index in range(replicas)]
    try:
        await asyncio.gather(
            *(drain(r, OperationStore(s)) for r, s in zip(crew, storages, strict=True))
        )
    finally:
        for storage in storages:
            await storage.close()
    return crew


def drain_in_processes(database: Database, replicas: int) -> list[Replica]:
    """The replicas as processes of their own, started together once all have connected."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(replicas + 1, timeout=START_TIMEOUT_S)
    results = context.Queue()
    children = [
        context.Process(target=_replica_process, args=(database, f"replica-{i}", start, results))
        for i in range(replicas)
    ]
    for child in children:
        child.start()
    try:
        start.wait()
        crew: list[Replica] = [results.get(timeout=DRAIN_TIMEOUT_S) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    return sorted(crew, key=lambda replica: replica.name)


def _replica_process(database: Database, name: str, start: Any, results: Any) -> None:
    """A replica process: connect, wait for the others, drain, send back what it saw."""
    quiet_logs()

    async def run() -> Replica:
        storage = await opened(database)
        replica = Replica(name)
        try:
            await asyncio.get_running_loop().run_in_executor(None, start.wait)
            await drain(replica, OperationStore(storage))
        finally:
            await storage.close()
        replica.retried = RETRIES.count
        return replica

    results.put(asyncio.run(run()))


async def claim_cell(database: Database, mode: str, replicas: int, operations: int) -> ClaimCell:
    """N queued operations drained by `replicas` replicas, then checked from the table."""
    admin = await opened(database)
    try:
        if await count_rows(admin):
            raise SystemExit(f"{database.url}: the operations table is not empty; use a new one")
        creator = OperationStore(admin)
        created = {(await creator.create(KIND, OWNER, REQUEST, 1)).name for _ in range(operations)}
        retried = RETRIES.count
        stop = asyncio.Event()
        watch = asyncio.create_task(lock_waits(admin, stop))
        try:
            if mode == "processes":
                crew = await asyncio.to_thread(drain_in_processes, database, replicas)
            else:
                crew = await drain_in_tasks(database, replicas)
        finally:
            stop.set()
            waits = await watch
        retried = RETRIES.count - retried + sum(replica.retried for replica in crew)
        problems = await verify(admin, {r.name: r.claimed for r in crew}, created)
        lost = sum(replica.lost for replica in crew)
        if lost:
            problems.append(f"{lost} finish() calls found their lease gone")
        await delete_own(admin)
    finally:
        await admin.close()
    wall_s = max(r.ended for r in crew) - min(r.began for r in crew)
    latencies_ms = np.array([s for replica in crew for s in replica.latencies_s]) * 1000
    shares = [len(replica.claimed) for replica in crew]
    return ClaimCell(
        backend=database.backend,
        mode=mode,
        replicas=replicas,
        operations=operations,
        claims_per_s=operations / wall_s,
        p50_ms=float(np.percentile(latencies_ms, 50)),
        p99_ms=float(np.percentile(latencies_ms, 99)),
        empty=sum(replica.empty for replica in crew),
        per_replica=(min(shares), max(shares)),
        retried=retried,
        lock_waits=waits,
        problems=tuple(problems),
    )


async def lock_waits(storage: Storage, stop: asyncio.Event) -> LockWaits | None:
    """Sample pg_stat_activity until `stop`: which statements of the database waited on a lock.

    A claim waiting on another's row lock (as without SKIP LOCKED) shows here
    as a `tuple` or `transactionid` wait; SQLite has no such view (its waits
    are the busy handler's sleeps, in the p99).
    """
    if storage.backend.lock_rows == "":
        return None

    async def waiting(tx: Transaction) -> list[tuple[Any, ...]]:
        return await tx.fetchall(
            "SELECT a.wait_event, a.query, b.query FROM pg_stat_activity a "
            "CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid) "
            "JOIN pg_stat_activity b ON b.pid = blocker.pid "
            "WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'"
        )

    found = LockWaits()
    while not stop.is_set():
        rows = await storage.transact(waiting, write=False)
        found.samples += 1
        found.seen += bool(rows)
        found.events.update(
            f"{_statement(str(waiter))} waits on {_statement(str(holder))} ({event})"
            for event, waiter, holder in rows
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOCK_SAMPLE_S)
    return found


STATEMENTS = {
    "SELECT name, kind, owner, state": "claim",
    "UPDATE operations SET state = $1, lease_owner": "claim",
    "SELECT name FROM operations": "finish",
    "UPDATE operations SET state = $1, result": "finish",
}
"""How each of the store's statements used here starts (as pg_stat_activity shows it)."""


def _statement(query: str) -> str:
    """Which call a statement of pg_stat_activity belongs to: claim, finish, or its first words."""
    for start, call in STATEMENTS.items():
        if query.startswith(start):
            return call
    return " ".join(query.split()[:3])


async def wait_cell(database: Database, samples: int, wake: bool, seed: int = 1) -> WaitCell:
    """Create on replica A, time until a runner's job starts (B polling; A too, woken, if `wake`).

    A random pause before each create puts it at a random point of B's poll
    interval. Without `wake`, A runs no runner (as if its runner were busy at
    its concurrency limit): the wait is B's poll, at most poll_s.
    """
    storages = {name: await opened(database) for name in ("A", "B")}
    stores = {name: OperationStore(storage) for name, storage in storages.items()}
    arrivals: list[tuple[bytes, str, float]] = []
    arrived = asyncio.Event()

    def job_of(replica: str) -> Job:
        async def job(request: bytes, progress: Progress) -> bytes:
            arrivals.append((request, replica, time.monotonic()))
            arrived.set()
            return replica.encode()

        return job

    runners = {
        name: OperationRunner(
            stores[name], {KIND: job_of(name)}, replica=name, ttl_s=TTL_S, lease_s=LEASE_S
        )
        for name in (("A", "B") if wake else ("B",))
    }
    for runner in runners.values():
        runner.start()
    names: dict[bytes, str] = {}
    waits: list[float] = []
    problems: list[str] = []
    try:
        waits, problems = await _sample(stores["A"], runners, names, arrivals, arrived, samples)
    finally:
        for runner in runners.values():
            await runner.stop()
    claimed_by: dict[str, list[str]] = {name: [] for name in runners}
    for request, replica, _ in arrivals:
        claimed_by[replica].append(names[request])
    problems += await verify(storages["A"], claimed_by, set(names.values()))
    await delete_own(storages["A"])
    for storage in storages.values():
        await storage.close()
    return WaitCell(
        backend=database.backend,
        how="A creates and wakes its runner; B polls" if wake else "A creates; B polls",
        waits_s=tuple(waits),
        by_creator=len(claimed_by.get("A", [])),
        problems=tuple(problems),
    )


async def _sample(
    creator: OperationStore,
    runners: dict[str, OperationRunner],
    names: dict[bytes, str],
    arrivals: list[tuple[bytes, str, float]],
    arrived: asyncio.Event,
    samples: int,
) -> tuple[list[float], list[str]]:
    """Create one operation at a time on A; each wait from create to its job's start."""
    rng = random.Random(1)
    waits: list[float] = []
    limit_s = 2 * POLL_S + 5.0
    for index in range(samples):
        await asyncio.sleep(rng.uniform(0.0, POLL_S))
        arrived.clear()
        request = str(index).encode()
        names[request] = (await creator.create(KIND, OWNER, request, 1)).name
        created_at = time.monotonic()
        if "A" in runners:
            runners["A"].wake()  # what StartBacktest does on the replica that created it
        try:
            await asyncio.wait_for(arrived.wait(), limit_s)
        except TimeoutError:
            return waits, [f"sample {index} not claimed within {limit_s:.0f} s"]
        waits.append(arrivals[-1][2] - created_at)
        for _ in range(1000):  # the runner writes the end just after the job returns
            if await _done(creator, names[request]):
                break
            await asyncio.sleep(0.005)
    return waits, []


async def _done(store: OperationStore, name: str) -> bool:
    operation = await store.get(name)
    return operation is not None and operation.done


async def run_backend(
    database: Database, replica_counts: list[int], operations: int, samples: int
) -> tuple[list[ClaimCell], list[WaitCell]]:
    """Every cell of one backend (SQLite: a fresh file per cell)."""
    claims, waits = [], []
    for mode in MODES:
        for replicas in replica_counts:
            if mode == "processes" and replicas == 1:
                continue  # one replica in a process of its own is the one task above
            fresh = _fresh(database, f"{mode}-{replicas}")
            claims.append(await claim_cell(fresh, mode, replicas, operations))
    if samples:
        for wake in (False, True):
            waits.append(await wait_cell(_fresh(database, f"wait-{wake}"), samples, wake))
    return claims, waits


def _fresh(database: Database, name: str) -> Database:
    """A new SQLite file next to `database`'s; PostgreSQL's one database (emptied per cell)."""
    if database.backend != "sqlite":
        return database
    folder = Path(database.url.removeprefix("sqlite:///")).parent
    return Database("sqlite", f"sqlite:///{folder / name / 'store.sqlite3'}")


def claims_table(cells: list[ClaimCell]) -> str:
    """The claim cells as a markdown table."""
    lines = [
        "| backend | replicas as | replicas | operations | claims/s | claim p50 ms "
        "| claim p99 ms | empty claims | claims per replica | retried tx "
        "| lock waits seen | exactly once |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in cells:
        share = f"{c.per_replica[0]:,}-{c.per_replica[1]:,}" if c.replicas > 1 else "-"
        locks = _locks(c.lock_waits)
        lines.append(
            f"| {c.backend} | {c.mode} | {c.replicas} | {c.operations:,} "
            f"| {c.claims_per_s:,.0f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.empty} | {share} "
            f"| {c.retried} | {locks} | {'yes' if not c.problems else 'NO'} |"
        )
    return "\n".join(lines)


def _locks(found: LockWaits | None) -> str:
    """A claims table cell: samples that saw a lock wait, of all, and who waited on whom."""
    if found is None:
        return "-"
    events = ", ".join(f"{name} {n}" for name, n in found.events.most_common())
    return f"{found.seen} of {found.samples:,}" + (f": {events}" if events else "")


def waits_table(cells: list[WaitCell]) -> str:
    """The wait cells as a markdown table."""
    lines = [
        f"| backend | who claims (runner poll_s {POLL_S:g} s) | samples | wait p50 ms "
        "| wait max ms | claimed by A | exactly once |",
        "|---|---|--:|--:|--:|--:|---|",
    ]
    for c in cells:
        waits_ms = np.array(c.waits_s or (float("nan"),)) * 1000
        lines.append(
            f"| {c.backend} | {c.how} | {len(c.waits_s)} | {np.median(waits_ms):.1f} "
            f"| {waits_ms.max():.1f} | {c.by_creator} | {'yes' if not c.problems else 'NO'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (--smoke: 200 operations, 1 and 4 replicas, 2 wait samples)."""
    parser = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__)
    parser.add_argument("--operations", type=int, help="queued operations per cell (2000)")
    parser.add_argument("--replicas", help="comma-separated replica counts (1,2,4,8)")
    parser.add_argument("--backend", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--wait-samples", type=int, help="creates per wait cell (10; 0: none)")
    parser.add_argument("--smoke", action="store_true", help="a quick run (~10 s)")
    parser.add_argument("--postgres-url", help="an empty database (default: a local server)")
    parser.add_argument("--password-file", default="", help="its password, for --postgres-url")
    args = parser.parse_args(argv)
    counts = args.replicas or ("1,4" if args.smoke else "1,2,4,8")
    args.replicas = [int(v) for v in counts.split(",") if v.strip()]
    args.operations = args.operations or (200 if args.smoke else 2000)
    if args.wait_samples is None:
        args.wait_samples = 2 if args.smoke else 10
    args.backend = [v.strip() for v in args.backend.split(",") if v.strip()]
    if set(args.backend) - {"sqlite", "postgresql"} or not args.replicas:
        parser.error("--backend takes sqlite and/or postgresql; --replicas one count or more")
    if min(args.replicas) < 1 or args.operations < 1:
        parser.error("--replicas and --operations must be >= 1")
    return args


def measure(args: argparse.Namespace, scratch: Path) -> tuple[list[ClaimCell], list[WaitCell]]:
    """Run the chosen backends (starting a local PostgreSQL server if none was named)."""
    claims: list[ClaimCell] = []
    waits: list[WaitCell] = []
    for backend in args.backend:
        server: LocalPostgres | None = None
        if backend == "sqlite":
            database = Database("sqlite", f"sqlite:///{scratch / 'store.sqlite3'}")
        elif args.postgres_url:
            database = Database("postgresql", args.postgres_url, args.password_file)
        else:
            server = LocalPostgres(free_port())
            server.start()
            url = server.create_database("claims")
            database = Database("postgresql", url, str(server.password_file))
        try:
            found = asyncio.run(
                run_backend(database, args.replicas, args.operations, args.wait_samples)
            )
        finally:
            if server is not None:
                server.stop()
        claims += found[0]
        waits += found[1]
    return claims, waits


def main(argv: list[str] | None = None) -> int:
    """Measure, print the tables; 1 if exactly-once failed anywhere."""
    args = parse_args(argv)
    quiet_logs()
    load_before = os.getloadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forecast-claims-") as scratch:
        claims, waits = measure(args, Path(scratch))
    out = sys.stdout
    out.write(
        "## Claims: claim -> finish until the queue is empty "
        "(each replica its own store connection)\n\n"
        f"{claims_table(claims)}\n\n"
    )
    if waits:
        out.write(f"## Create to claim through OperationRunner\n\n{waits_table(waits)}\n\n")
    load_after = os.getloadavg()
    out.write(
        f"{os.cpu_count()} cores; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {time.perf_counter() - began:.0f} s\n"
    )
    failed = [(c.backend, c.problems) for c in claims if c.problems]
    failed += [(c.backend, c.problems) for c in waits if c.problems]
    for backend, problems in failed:
        sys.stderr.write(f"ERROR: exactly-once failed on {backend}: {'; '.join(problems)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
