"""The LSTM network and its autoregressive forecast: the one copy used by Triton and training.

The network is a one-step-ahead model: it reads a z-scored window and predicts
the next value in the same z units. `forecast` runs it over the window once and
then feeds each prediction back as the next input, carrying the LSTM state, so
``h`` steps cost one pass over the window plus ``h - 1`` single-step passes.
Training therefore fits the steps after the window too (teacher-forced), so
the carried state stays in the regime the network was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

HIDDEN_SIZE = 64
NUM_LAYERS = 2


class LSTMForecaster(nn.Module):
    """A stacked LSTM over a univariate window with a linear head on the last state."""

    def __init__(self, hidden_size: int = HIDDEN_SIZE, num_layers: int = NUM_LAYERS) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(
            input_size=1, hidden_size=hidden_size, num_layers=num_layers, batch_first=True
        )
        self.head = nn.Linear(hidden_size, 1)

    def predict_each_step(self, inputs: torch.Tensor) -> torch.Tensor:
        """The next-value prediction after every prefix of `inputs` ``[B, T]``: ``[B, T]``.

        Column ``t`` is what `step` would return for ``inputs[:, : t + 1]``; training
        uses it to fit the window's end and its continuation in one pass.
        """
        output, _ = self.lstm(inputs.unsqueeze(-1))
        return self.head(output).squeeze(-1)

    def step(
        self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run over `inputs` ``[B, T]``; return the next value ``[B]`` and the LSTM state."""
        output, state = self.lstm(inputs.unsqueeze(-1), state)
        return self.head(output[:, -1]).squeeze(-1), state

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """One-step-ahead prediction ``[B]`` for windows ``[B, T]`` (the training objective)."""
        return self.step(windows)[0]


def forecast(network: LSTMForecaster, windows: torch.Tensor, horizon: int) -> torch.Tensor:
    """Forecast `horizon` steps ``[B, horizon]`` from z-scored windows ``[B, T]``."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    prediction, state = network.step(windows)
    steps = [prediction]
    for _ in range(horizon - 1):
        prediction, state = network.step(prediction.unsqueeze(-1), state)
        steps.append(prediction)
    return torch.stack(steps, dim=1)


def save_checkpoint(network: LSTMForecaster, path: Path, metadata: dict[str, Any]) -> None:
    """Write the weights and their metadata (window, seed, data span...) to `path`."""
    architecture = {"hidden_size": network.hidden_size, "num_layers": network.num_layers}
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "metadata": {**metadata, **architecture}}, path)


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[LSTMForecaster, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint`: the network in eval mode and its metadata."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    metadata: dict[str, Any] = checkpoint["metadata"]
    network = LSTMForecaster(int(metadata["hidden_size"]), int(metadata["num_layers"]))
    network.load_state_dict(checkpoint["state_dict"])
    return network.to(device).eval(), metadata
