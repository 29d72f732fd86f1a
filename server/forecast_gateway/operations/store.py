"""The `operations` table: every operation's state, lease, progress and result, one SQL for both.

An operation is `queued`, `running` (a replica holds its lease until
`lease_expires`) or `done` (a result, or an error code and message, with the
error's serialized google.rpc.Status, if any, in `result`; deleted after
`expires`). Claiming is one transaction: the oldest queued operation,
or a running one whose lease has run out, is locked and leased. On
PostgreSQL the SELECT takes `FOR UPDATE SKIP LOCKED`, so replicas claiming at
once each get a different row and none waits on another; on SQLite the
write transaction (BEGIN IMMEDIATE) serialises the replicas of one host.
Every write that belongs to a run names its replica, so a replica whose
lease was taken over can no longer change the operation.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from forecast_gateway.ab import Storage, Transaction

MAX_ATTEMPTS = 3
"""Runs an operation gets: a replica that stops mid-run hands it to the next claim."""
CANCELLED = 1
ABORTED = 10
"""google.rpc.Code values of the errors this module itself ends operations with."""

_COLUMNS = (
    "name, kind, owner, state, done_units, total_units, result, error_code, error_message, "
    "attempts, cancel_requested, created, updated, expires"
)


class State(enum.Enum):
    """Where an operation is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class Operation:
    """One operation as the store holds it (its request bytes are read only to run it)."""

    name: str
    kind: str
    owner: str
    state: State
    done_units: int
    total_units: int
    result: bytes | None
    error_code: int | None
    error_message: str | None
    attempts: int
    cancel_requested: bool
    created: float
    updated: float
    expires: float | None

    @property
    def done(self) -> bool:
        """Whether it has finished (with a result or an error)."""
        return self.state is State.DONE


def _operation(row: tuple[object, ...]) -> Operation:
    (name, kind, owner, state, done, total, result, code, message) = row[:9]
    attempts, cancel, created, updated, expires = row[9:]
    return Operation(
        name=str(name),
        kind=str(kind),
        owner=str(owner),
        state=State(state),
        done_units=int(done),  # type: ignore[call-overload]
        total_units=int(total),  # type: ignore[call-overload]
        result=bytes(result) if result is not None else None,  # type: ignore[call-overload]
        error_code=int(code) if code is not None else None,  # type: ignore[call-overload]
        error_message=str(message) if message is not None else None,
        attempts=int(attempts),  # type: ignore[call-overload]
        cancel_requested=bool(cancel),
        created=float(created),  # type: ignore[arg-type]
        updated=float(updated),  # type: ignore[arg-type]
        expires=float(expires) if expires is not None else None,  # type: ignore[arg-type]
    )


class OperationStore:
    """The operations' SQL, each call one transaction on the shared store."""

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.clock = clock

    async def create(self, kind: str, owner: str, request: bytes, total_units: int) -> Operation:
        """A new queued operation, named "operations/<random hex>"."""
        name = f"operations/{uuid.uuid4().hex}"
        now = self.clock()

        async def insert(tx: Transaction) -> None:
            await tx.execute(
                "INSERT INTO operations (name, kind, owner, request, state, total_units, "
                "created, updated) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (name, kind, owner, request, State.QUEUED.value, total_units, now, now),
            )

        await self.storage.transact(insert, write=True)
        return Operation(
            name=name,
            kind=kind,
            owner=owner,
            state=State.QUEUED,
            done_units=0,
            total_units=total_units,
            result=None,
            error_code=None,
            error_message=None,
            attempts=0,
            cancel_requested=False,
            created=now,
            updated=now,
            expires=None,
        )

    async def get(self, name: str) -> Operation | None:
        """The operation, or None (unknown, deleted or expired)."""

        async def read(tx: Transaction) -> Operation | None:
            row = await tx.fetchone(f"SELECT {_COLUMNS} FROM operations WHERE name = %s", (name,))
            return _operation(row) if row is not None else None

        return await self.storage.transact(read, write=False)

    async def page(self, owner: str, size: int, after: tuple[float, str] | None) -> list[Operation]:
        """`owner`'s operations, oldest first, after the (created, name) of the last one seen."""
        created, name = after if after is not None else (-1.0, "")

        async def read(tx: Transaction) -> list[Operation]:
            rows = await tx.fetchall(
                f"SELECT {_COLUMNS} FROM operations WHERE owner = %s "
                "AND (created > %s OR (created = %s AND name > %s)) "
                "ORDER BY created, name LIMIT %s",
                (owner, created, created, name, size),
            )
            return [_operation(row) for row in rows]

        return await self.storage.transact(read, write=False)

    async def claim(
        self, replica: str, lease_s: float, ttl_s: float
    ) -> tuple[Operation, bytes] | None:
        """Lease the oldest runnable operation to `replica`: it and its request, or None.

        A running operation whose lease ran out has lost its replica: it is
        run again, unless it has had MAX_ATTEMPTS runs (then it ends ABORTED,
        saying so) or its caller asked to cancel it (it ends CANCELLED).
        """
        now = self.clock()
        suffix = self.storage.skip_locked

        async def take(tx: Transaction) -> tuple[Operation, bytes] | None:
            while True:
                row = await tx.fetchone(
                    f"SELECT {_COLUMNS}, request FROM operations "
                    "WHERE state = %s OR (state = %s AND lease_expires < %s) "
                    f"ORDER BY created LIMIT 1{suffix}",
                    (State.QUEUED.value, State.RUNNING.value, now),
                )
                if row is None:
                    return None
                found, request = _operation(row[:-1]), row[-1]
                name, attempts, cancel = found.name, found.attempts, found.cancel_requested
                if cancel or attempts >= MAX_ATTEMPTS:
                    code, message = (
                        (CANCELLED, "cancelled by its caller")
                        if cancel
                        else (
                            ABORTED,
                            f"interrupted {attempts} times: the replica running it stopped "
                            "each time; start it again",
                        )
                    )
                    await _end(tx, name, None, code, message, now, now + ttl_s)
                    continue
                await tx.execute(
                    "UPDATE operations SET state = %s, lease_owner = %s, lease_expires = %s, "
                    "attempts = attempts + 1, updated = %s WHERE name = %s",
                    (State.RUNNING.value, replica, now + lease_s, now, name),
                )
                leased = replace(found, state=State.RUNNING, attempts=attempts + 1, updated=now)
                return leased, bytes(request)

        return await self.storage.transact(take, write=True)

    async def renew(
        self, name: str, replica: str, lease_s: float, done_units: int
    ) -> tuple[bool, bool]:
        """Extend `replica`'s lease and record progress: (still its own, cancel requested)."""
        now = self.clock()

        async def update(tx: Transaction) -> tuple[bool, bool]:
            changed = await tx.execute(
                "UPDATE operations SET lease_expires = %s, done_units = %s, updated = %s "
                "WHERE name = %s AND state = %s AND lease_owner = %s",
                (now + lease_s, done_units, now, name, State.RUNNING.value, replica),
            )
            if not changed:
                return False, False
            row = await tx.fetchone(
                "SELECT cancel_requested FROM operations WHERE name = %s", (name,)
            )
            return True, bool(row and row[0])

        return await self.storage.transact(update, write=True)

    async def finish(
        self,
        name: str,
        replica: str,
        ttl_s: float,
        *,
        result: bytes | None = None,
        error: tuple[int, str] | None = None,
        done_units: int | None = None,
    ) -> bool:
        """End `replica`'s run with a result or an error; False if the lease was taken over."""
        now = self.clock()
        code, message = error if error is not None else (None, None)

        async def end(tx: Transaction) -> bool:
            owned = await tx.fetchone(
                "SELECT name FROM operations WHERE name = %s AND state = %s AND lease_owner = %s"
                f"{self.storage.backend.lock_rows}",
                (name, State.RUNNING.value, replica),
            )
            if owned is None:
                return False
            await _end(tx, name, result, code, message, now, now + ttl_s, done_units)
            return True

        return await self.storage.transact(end, write=True)

    async def release_all(self, replica: str) -> int:
        """Hand back every run of `replica` (stopping cleanly): queued again, not counted."""
        now = self.clock()

        async def back(tx: Transaction) -> int:
            return await tx.execute(
                "UPDATE operations SET state = %s, lease_owner = NULL, lease_expires = NULL, "
                "attempts = attempts - 1, updated = %s WHERE state = %s AND lease_owner = %s",
                (State.QUEUED.value, now, State.RUNNING.value, replica),
            )

        return await self.storage.transact(back, write=True)

    async def cancel(self, name: str, ttl_s: float) -> Operation | None:
        """Ask to cancel: a queued one ends CANCELLED now, a running one at its next renewal."""
        now = self.clock()

        async def ask(tx: Transaction) -> None:
            await tx.execute(
                "UPDATE operations SET cancel_requested = 1, updated = %s "
                "WHERE name = %s AND state <> %s",
                (now, name, State.DONE.value),
            )
            row = await tx.fetchone("SELECT state FROM operations WHERE name = %s", (name,))
            if row is not None and row[0] == State.QUEUED.value:
                await _end(tx, name, None, CANCELLED, "cancelled by its caller", now, now + ttl_s)

        await self.storage.transact(ask, write=True)
        return await self.get(name)

    async def delete(self, name: str) -> bool:
        """Forget the operation (a running one's replica stops at its next renewal)."""

        async def remove(tx: Transaction) -> bool:
            return bool(await tx.execute("DELETE FROM operations WHERE name = %s", (name,)))

        return await self.storage.transact(remove, write=True)

    async def prune(self) -> int:
        """Delete the finished operations whose results have expired."""
        now = self.clock()

        async def remove(tx: Transaction) -> int:
            return await tx.execute(
                "DELETE FROM operations WHERE state = %s AND expires < %s",
                (State.DONE.value, now),
            )

        return await self.storage.transact(remove, write=True)


async def _end(
    tx: Transaction,
    name: str,
    result: bytes | None,
    code: int | None,
    message: str | None,
    now: float,
    expires: float | None,
    done_units: int | None = None,
) -> None:
    await tx.execute(
        "UPDATE operations SET state = %s, result = %s, error_code = %s, error_message = %s, "
        "lease_owner = NULL, lease_expires = NULL, updated = %s, expires = %s, "
        "done_units = COALESCE(%s, done_units) WHERE name = %s",
        (State.DONE.value, result, code, message, now, expires, done_units, name),
    )
