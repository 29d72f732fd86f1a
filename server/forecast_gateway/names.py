"""The rules for names callers and operators write: model versions and experiment names.

One rule each, read by request validation, the config file, the routing
file and the A/B store, so that a name one accepts the others accept too.
"""

from __future__ import annotations

import re

VERSION_RULE = 'a version number such as "2" (1 to 19 digits, no leading zero)'
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
"""Triton's version folders: positive int64 numbers."""

EXPERIMENT_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_version(text: str) -> bool:
    """Whether `text` names a model version (the length first: a batch checks it per series)."""
    return len(text) <= 19 and text.isascii() and _VERSION.fullmatch(text) is not None


def is_experiment_name(text: str) -> bool:
    """Whether `text` is a valid experiment name."""
    return EXPERIMENT_NAME.fullmatch(text) is not None
