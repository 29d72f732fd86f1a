"""Where a store test's database lives: a fresh SQLite file or PostgreSQL database.

Store tests run on both backends (`@pytest.fixture(params=BACKENDS)`); each
asks `location` for its URL and password file instead of spelling the two
cases out again.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tools.local_postgres import LocalPostgres

BACKENDS = ["sqlite", "postgresql"]


def location(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    name: str = "main",
    databases: dict[str, str] | None = None,
) -> tuple[str, str]:
    """(store_url, password_file) of database `name` on the test's backend.

    With `databases`, a name already made is returned again (a restart, or a
    second replica sharing the data); SQLite shares by path anyway.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / name / 'experiments.sqlite3'}", ""
    server: LocalPostgres = request.getfixturevalue("postgres")
    known = databases if databases is not None else {}
    if name not in known:
        known[name] = server.create_database(f"ab_{uuid.uuid4().hex[:12]}")
    return known[name], str(server.password_file)
