"""The A/B store's schema versions on both backends: SQLITE and POSTGRES (`ab.schema.Migration`).

The tables are the same on both, their types each backend's own; a data
step (`ab.schema`) runs after the statements of its version.
"""

from forecast_gateway.ab.schema import Migration, backfill_aggregates, exact_moments

# -- SQLite -------------------------------------------------------------------------------

_SQLITE_V1 = (
    """CREATE TABLE IF NOT EXISTS forecasts (
        forecast_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        horizon INTEGER NOT NULL,
        naive_scale REAL NOT NULL,
        created_at REAL NOT NULL,
        actuals BLOB,
        steps_received INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS forecasts_by_age ON forecasts (created_at)",
    """CREATE TABLE IF NOT EXISTS predictions (
        forecast_id TEXT NOT NULL,
        version TEXT NOT NULL,
        model TEXT NOT NULL,
        role TEXT NOT NULL,
        forecast_values BLOB NOT NULL,
        latency_ms REAL NOT NULL,
        recorded_at REAL NOT NULL,
        orphan INTEGER NOT NULL DEFAULT 0,
        steps_scored INTEGER NOT NULL DEFAULT 0,
        mae REAL,
        smape REAL,
        mase REAL,
        PRIMARY KEY (forecast_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS orphans_by_age ON predictions (recorded_at) WHERE orphan = 1",
    """CREATE TABLE IF NOT EXISTS counters (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        served INTEGER NOT NULL DEFAULT 0,
        shadowed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model, version)
    )""",
)
_SQLITE_V2 = (
    # Named experiments, and running aggregates (ab.aggregates) in place of the
    # per-read scans and their indexes.
    "DROP INDEX IF EXISTS predictions_by_latency",
    "DROP INDEX IF EXISTS predictions_scored",
    "ALTER TABLE forecasts ADD COLUMN experiment TEXT NOT NULL DEFAULT 'default'",
    "ALTER TABLE forecasts ADD COLUMN comparable INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE counters RENAME TO counters_v1",
    """CREATE TABLE counters (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        served INTEGER NOT NULL DEFAULT 0,
        shadowed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model, experiment, version)
    )""",
    "INSERT INTO counters SELECT model, 'default', version, served, shadowed FROM counters_v1",
    "DROP TABLE counters_v1",
    """CREATE TABLE experiments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        started_at REAL NOT NULL,
        forecasts INTEGER NOT NULL,
        PRIMARY KEY (model, experiment)
    )""",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        shift REAL NOT NULL,
        n INTEGER NOT NULL,
        s1 REAL NOT NULL,
        s2 REAL NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
    """CREATE TABLE latency_buckets (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (model, experiment, version, bucket)
    )""",
    "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO store_meta (name, value) VALUES ('forecasts', 0)",
)
_SQLITE_V3 = (
    # Calibration: the tracked bounds of each prediction, and the score pools.
    "ALTER TABLE predictions ADD COLUMN bounds BLOB",
    "ALTER TABLE predictions ADD COLUMN naive_scale REAL",
    """CREATE TABLE calibration_pools (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER NOT NULL,
        scores BLOB NOT NULL,
        revision INTEGER NOT NULL,
        PRIMARY KEY (model, version, step)
    )""",
)
_SQLITE_V4 = (
    # The forecast count in rows that add up to it (one per store), not one row every
    # write and prune of every replica locks.
    "CREATE TABLE forecast_counts (shard INTEGER PRIMARY KEY, forecasts INTEGER NOT NULL)",
    "INSERT INTO forecast_counts (shard, forecasts) "
    "SELECT 0, value FROM store_meta WHERE name = 'forecasts'",
    "DROP TABLE store_meta",
)
_SQLITE_V5 = (
    # Exact running sums (scoring.ExactSums): a value taken back out leaves exactly the others'.
    "ALTER TABLE moments RENAME TO moments_shifted",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        n INTEGER NOT NULL,
        total BLOB NOT NULL,
        squares BLOB NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
)
_SQLITE_V6 = (
    # Sticky splits: the randomised unit of each sticky draw (a digest of its routing key),
    # and per unit the exact sums of its forecasts' comparable MASE.
    "ALTER TABLE forecasts ADD COLUMN unit TEXT",
    """CREATE TABLE unit_scores (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        unit TEXT NOT NULL,
        n INTEGER NOT NULL,
        total BLOB NOT NULL,
        squares BLOB NOT NULL,
        PRIMARY KEY (model, experiment, version, unit)
    )""",
)
_SQLITE_V7 = (
    # Series with time: the first forecast step's time and the frequency (ReportActuals.start).
    "ALTER TABLE forecasts ADD COLUMN first_step_ns INTEGER",
    "ALTER TABLE forecasts ADD COLUMN frequency TEXT",
)
_SQLITE_V8 = (
    # CQR: which predictions' bounds are the model's own quantiles, and per tracked coverage
    # the pools of their conformity scores (ab.pools.CQR_POOLS).
    "ALTER TABLE predictions ADD COLUMN native_bounds INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE cqr_pools (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER NOT NULL,
        coverage REAL NOT NULL,
        scores BLOB NOT NULL,
        revision INTEGER NOT NULL,
        PRIMARY KEY (model, version, step, coverage)
    )""",
)
_SQLITE_V9 = (
    # Long-running operations (forecast_gateway.operations): queued work, its lease, its result.
    """CREATE TABLE operations (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        request BLOB NOT NULL,
        state TEXT NOT NULL,
        done_units INTEGER NOT NULL DEFAULT 0,
        total_units INTEGER NOT NULL DEFAULT 0,
        result BLOB,
        error_code INTEGER,
        error_message TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        expires REAL
    )""",
    "CREATE INDEX operations_claim ON operations (state, created)",
    "CREATE INDEX operations_owner ON operations (owner, created)",
)
SQLITE = (
    Migration(1, _SQLITE_V1),
    Migration(2, _SQLITE_V2, then=backfill_aggregates),
    Migration(3, _SQLITE_V3),
    Migration(4, _SQLITE_V4),
    Migration(5, _SQLITE_V5, then=exact_moments),
    Migration(6, _SQLITE_V6),
    Migration(7, _SQLITE_V7),
    Migration(8, _SQLITE_V8),
    Migration(9, _SQLITE_V9),
)


# -- PostgreSQL ---------------------------------------------------------------------------

_POSTGRES_V1 = (
    """CREATE TABLE forecasts (
        forecast_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        comparable SMALLINT NOT NULL DEFAULT 1,
        horizon INTEGER NOT NULL,
        naive_scale DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        actuals BYTEA,
        steps_received INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX forecasts_by_age ON forecasts (created_at, forecast_id)",
    """CREATE TABLE predictions (
        forecast_id TEXT NOT NULL,
        version TEXT NOT NULL,
        model TEXT NOT NULL,
        role TEXT NOT NULL,
        forecast_values BYTEA NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        orphan SMALLINT NOT NULL DEFAULT 0,
        steps_scored INTEGER NOT NULL DEFAULT 0,
        mae DOUBLE PRECISION,
        smape DOUBLE PRECISION,
        mase DOUBLE PRECISION,
        PRIMARY KEY (forecast_id, version)
    )""",
    "CREATE INDEX orphans_by_age ON predictions (recorded_at) WHERE orphan = 1",
    """CREATE TABLE counters (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        served BIGINT NOT NULL DEFAULT 0,
        shadowed BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (model, experiment, version)
    )""",
    """CREATE TABLE experiments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        forecasts BIGINT NOT NULL,
        PRIMARY KEY (model, experiment)
    )""",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        shift DOUBLE PRECISION NOT NULL,
        n BIGINT NOT NULL,
        s1 DOUBLE PRECISION NOT NULL,
        s2 DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
    """CREATE TABLE latency_buckets (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (model, experiment, version, bucket)
    )""",
    "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO store_meta (name, value) VALUES ('forecasts', 0)",
)
_POSTGRES_V2 = (
    # Calibration: the tracked bounds of each prediction, and the score pools.
    "ALTER TABLE predictions ADD COLUMN bounds BYTEA",
    "ALTER TABLE predictions ADD COLUMN naive_scale DOUBLE PRECISION",
    """CREATE TABLE calibration_pools (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER NOT NULL,
        scores BYTEA NOT NULL,
        revision BIGINT NOT NULL,
        PRIMARY KEY (model, version, step)
    )""",
)
_POSTGRES_V3 = (
    # The forecast count in rows that add up to it (one per store), not one row every
    # write and prune of every replica locks.
    "CREATE TABLE forecast_counts (shard INTEGER PRIMARY KEY, forecasts BIGINT NOT NULL)",
    "INSERT INTO forecast_counts (shard, forecasts) "
    "SELECT 0, value FROM store_meta WHERE name = 'forecasts'",
    "DROP TABLE store_meta",
)
_POSTGRES_V4 = (
    # Exact running sums (scoring.ExactSums): a value taken back out leaves exactly the others'.
    "ALTER TABLE moments RENAME TO moments_shifted",
    "ALTER INDEX moments_pkey RENAME TO moments_shifted_pkey",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        n BIGINT NOT NULL,
        total BYTEA NOT NULL,
        squares BYTEA NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
)
_POSTGRES_V5 = (
    # Sticky splits: the randomised unit of each sticky draw (a digest of its routing key),
    # and per unit the exact sums of its forecasts' comparable MASE.
    "ALTER TABLE forecasts ADD COLUMN unit TEXT",
    """CREATE TABLE unit_scores (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        unit TEXT NOT NULL,
        n BIGINT NOT NULL,
        total BYTEA NOT NULL,
        squares BYTEA NOT NULL,
        PRIMARY KEY (model, experiment, version, unit)
    )""",
)
_POSTGRES_V6 = (
    # Series with time: the first forecast step's time and the frequency (ReportActuals.start).
    "ALTER TABLE forecasts ADD COLUMN first_step_ns BIGINT",
    "ALTER TABLE forecasts ADD COLUMN frequency TEXT",
)
_POSTGRES_V7 = (
    # CQR: which predictions' bounds are the model's own quantiles, and per tracked coverage
    # the pools of their conformity scores (ab.pools.CQR_POOLS).
    "ALTER TABLE predictions ADD COLUMN native_bounds SMALLINT NOT NULL DEFAULT 0",
    """CREATE TABLE cqr_pools (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER NOT NULL,
        coverage DOUBLE PRECISION NOT NULL,
        scores BYTEA NOT NULL,
        revision BIGINT NOT NULL,
        PRIMARY KEY (model, version, step, coverage)
    )""",
)
_POSTGRES_V8 = (
    # Long-running operations (forecast_gateway.operations): queued work, its lease, its result.
    """CREATE TABLE operations (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        request BYTEA NOT NULL,
        state TEXT NOT NULL,
        done_units BIGINT NOT NULL DEFAULT 0,
        total_units BIGINT NOT NULL DEFAULT 0,
        result BYTEA,
        error_code INTEGER,
        error_message TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires DOUBLE PRECISION,
        cancel_requested SMALLINT NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION
    )""",
    "CREATE INDEX operations_claim ON operations (state, created)",
    "CREATE INDEX operations_owner ON operations (owner, created)",
)
POSTGRES = (
    Migration(1, _POSTGRES_V1),
    Migration(2, _POSTGRES_V2),
    Migration(3, _POSTGRES_V3),
    Migration(4, _POSTGRES_V4, then=exact_moments),
    Migration(5, _POSTGRES_V5),
    Migration(6, _POSTGRES_V6),
    Migration(7, _POSTGRES_V7),
    Migration(8, _POSTGRES_V8),
)
