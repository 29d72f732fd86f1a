"""Triton model for lstm_timeseries: the LSTM of lstm_network.py behind the batched base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from forecast_backend import BatchForecaster, FloatArray
from lstm_network import forecast, load_checkpoint


class LSTMTimeseriesModel(BatchForecaster):
    """Loads ``<version>/model.pt`` and forecasts each batch with one autoregressive pass."""

    def setup(self, args: dict[str, str]) -> None:
        torch.set_num_threads(int(self.parameter("torch_num_threads", "1") or "1"))
        weights = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.network, self.metadata = load_checkpoint(weights, self.device)
        window = int(self.metadata["window"])
        if window != self.limits.sequence_length:
            raise ValueError(
                f"{weights} was trained on window {window}, but the config of version "
                f"{self.version} says sequence_length {self.limits.sequence_length}"
            )

    def predict(self, windows: FloatArray, horizon: int) -> np.ndarray[Any, Any]:
        with torch.inference_mode():
            inputs = torch.from_numpy(windows).to(self.device)
            return forecast(self.network, inputs, horizon).cpu().numpy()
