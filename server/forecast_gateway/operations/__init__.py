"""Long-running operations: bulk work that returns a name at once (AIP-151).

`store` keeps each operation in the shared store's `operations` table (the
experiments' database: SQLite embedded, PostgreSQL for replicas), so any
replica answers for any operation. `runner` runs them: each replica claims
queued operations with a lease (`SELECT ... FOR UPDATE SKIP LOCKED` on
PostgreSQL), renews it while it works, reports progress, and writes the
result or the error; an operation whose replica stopped is claimed again
once its lease runs out, up to MAX_ATTEMPTS runs, then ends with an error
saying so. What an operation does is a `Job` the edge registers by kind:
this package knows bytes in and bytes out, never a proto.
"""

from forecast_gateway.operations.runner import Job, OperationRunner, Progress
from forecast_gateway.operations.store import (
    MAX_ATTEMPTS,
    Operation,
    OperationStore,
    State,
)

__all__ = [
    "MAX_ATTEMPTS",
    "Job",
    "Operation",
    "OperationRunner",
    "OperationStore",
    "Progress",
    "State",
]
