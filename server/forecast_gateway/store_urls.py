"""What a `store_url` names: the one place that knows its schemes.

The config checks and resolves store URLs, the A/B store opens them: both
read them with these functions.
"""

from __future__ import annotations

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"
SQLITE_PREFIX = "sqlite:///"
"""`sqlite:///` and the path: relative, or absolute with a fourth slash (as SQLAlchemy)."""


def is_postgres(url: str) -> bool:
    """Whether a store URL names a PostgreSQL database."""
    return url.strip().lower().startswith(POSTGRES_SCHEMES)


def is_known(url: str) -> bool:
    """Empty, a plain path, `sqlite:///...` or a PostgreSQL URL (no other scheme)."""
    return url.strip().lower().startswith((SQLITE_PREFIX, *POSTGRES_SCHEMES)) or "://" not in url


def sqlite_path(url: str, default_path: str) -> str:
    """The SQLite file a URL names: `sqlite:///rel`, `sqlite:////abs`, a path, or the default."""
    url = url.strip()
    if not url:
        return default_path
    if url.startswith(SQLITE_SCHEME):
        path = url[len(SQLITE_SCHEME) :]
        if not path.startswith("/"):
            raise ValueError("a SQLite store URL is sqlite:///relative/path or sqlite:////abs/path")
        return path[1:] or ":memory:"
    return url
