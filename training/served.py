"""Import the served model code from model_repository/: training evaluates what Triton runs.

The modules are loaded by file path (model_repository/ is not a package) with
bytecode writing off: a ``__pycache__`` directory inside the repository would be
listed by Triton as a model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def load_served_module(relative_path: str) -> ModuleType:
    """Import ``model_repository/<relative_path>`` by path, once (later calls reuse the module)."""
    path = MODEL_REPOSITORY / relative_path
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.dont_write_bytecode = previous
    return module


def lstm_network() -> ModuleType:
    """Return the served module with the LSTM network, `forecast` and the checkpoint helpers."""
    return load_served_module("lstm_timeseries/lstm_network.py")


def weights_path(version: int) -> Path:
    """Where Triton loads the LSTM weights of `version` from."""
    return MODEL_REPOSITORY / "lstm_timeseries" / str(version) / "model.pt"
