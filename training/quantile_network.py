"""The quantile MLP: raw windows in, raw quantiles out, its scaling inside the network.

Everything the served model computes is in `QuantileMLP.forward`, so the
exported ONNX graph is the whole model and the gateway sends raw values
(``forecast.normalization: none``):

1. each window is z-scored by its own mean and standard deviation (the
   deviation floored at `RELATIVE_FLOOR` of the window's mean absolute
   value, so a constant or all-zero window is finite), and the position of
   zero in those units is a feature (where a positive series' floor lies);
2. a residual MLP plus a linear skip (a learnt linear autoregression for the
   median) maps that to the median and to positive gaps between neighbouring
   levels, summed outwards from the median: quantiles never cross;
3. the quantiles are mapped back to the series' units; a window with no
   negative value gets quantiles clipped at zero (sales, counts, demand).
"""

from __future__ import annotations

import torch
from torch import nn

WINDOW = 56
HORIZON = 28
LEVELS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975)
MEDIAN = LEVELS.index(0.5)
RELATIVE_FLOOR = 1e-4  # std floor, relative to the window's mean |x| (float32 rounding)
ABSOLUTE_FLOOR = 1e-8
Z_CLIP = 10.0


class ResidualBlock(nn.Module):
    """Two linear layers with a ReLU between them, added to the input (then layer norm)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of `x` [B, width]."""
        result: torch.Tensor = self.norm(x + self.body(x))
        return result


class QuantileMLP(nn.Module):
    """A direct multi-horizon quantile forecaster over a fixed window."""

    def __init__(
        self,
        window: int = WINDOW,
        horizon: int = HORIZON,
        levels: tuple[float, ...] = LEVELS,
        width: int = 256,
        blocks: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.window, self.horizon, self.levels = window, horizon, levels
        self.inlet = nn.Sequential(nn.Linear(window + 1, width), nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(blocks)))
        self.head = nn.Linear(width, horizon * len(levels))
        self.skip = nn.Linear(window, horizon)

    def scaled(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z-scored window clipped to +-Z_CLIP, mean [B,1], floored std [B,1])."""
        mean = history.mean(dim=1, keepdim=True)
        centered = history - mean
        std = torch.sqrt((centered * centered).mean(dim=1, keepdim=True))
        floor = RELATIVE_FLOOR * history.abs().mean(dim=1, keepdim=True)
        std = torch.clamp(torch.maximum(std, floor), min=ABSOLUTE_FLOOR)
        return torch.clamp(centered / std, -Z_CLIP, Z_CLIP), mean, std

    def z_quantiles(self, z: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Quantiles in the window's z units, [B, horizon, levels], sorted along levels."""
        features = torch.cat([z, zero], dim=1)
        raw = self.head(self.blocks(self.inlet(features)))
        raw = raw.reshape(-1, self.horizon, len(self.levels))
        median = raw[:, :, MEDIAN] + self.skip(z)
        gaps = nn.functional.softplus(raw)
        above = median.unsqueeze(2) + torch.cumsum(gaps[:, :, MEDIAN + 1 :], dim=2)
        below = median.unsqueeze(2) - torch.cumsum(gaps[:, :, :MEDIAN].flip(2), dim=2)
        return torch.cat([below.flip(2), median.unsqueeze(2), above], dim=2)

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw windows [B, window] -> (median [B, horizon], quantiles [B, horizon, levels])."""
        z, mean, std = self.scaled(history)
        zero = torch.clamp(-mean / std, -Z_CLIP, Z_CLIP) / Z_CLIP
        quantiles = mean.unsqueeze(2) + std.unsqueeze(2) * self.z_quantiles(z, zero)
        non_negative = (history.min(dim=1, keepdim=True).values >= 0).unsqueeze(2)
        quantiles = torch.where(non_negative, torch.relu(quantiles), quantiles)
        return quantiles[:, :, MEDIAN], quantiles
