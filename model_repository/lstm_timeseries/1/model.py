"""lstm_timeseries version 1: the shared LSTMTimeseriesModel (window set in config.pbtxt)."""

import sys
from pathlib import Path

# Set before importing the shared modules: a __pycache__ directory at the
# repository root would be listed by Triton as a model.
sys.dont_write_bytecode = True
for _path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from lstm_model import LSTMTimeseriesModel as TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
