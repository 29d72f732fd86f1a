"""Train one version of the lstm_timeseries model on co2 and evaluate it rolling-origin.

    python -m training.train_lstm --version 1|2 [--seed 0] [--epochs N]

Windows of the training part are normalized with the gateway's own rule
(forecast_gateway.core.normalization); the target is the next value scaled by the
same window's mean and std. Each sample is a window plus the `continuation`
points after it (scaled by the window's mean and std too): the one-step loss
covers the window's end and every continuation step (teacher forcing), which
is the carried-state regime the served autoregressive forecast runs in.
Without it the window-10 model's MASE at h=12 is ~2 instead of ~1.0. Adam
with early stopping on the last part of the training samples. The weights go
to model_repository/lstm_timeseries/<v>/model.pt, the metrics to
training/results/lstm_v<v>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from numpy.lib.stride_tricks import sliding_window_view

from forecast_gateway.core.normalization import normalize
from training.data import SEASON, load_co2, load_co2_dates, train_size
from training.evaluate import Backtest, naive_forecast, seasonal_naive_scale, z_forecaster
from training.served import REPO_ROOT, lstm_network, weights_path

WINDOWS = {1: 10, 2: 52}  # model version -> window (the config's sequence_length)
HORIZONS = (5, 12)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run."""

    version: int
    window: int
    seed: int = 0
    max_epochs: int = 200
    patience: int = 15
    continuation: int = 12
    batch_size: int = 64
    learning_rate: float = 1e-3
    validation_fraction: float = 0.15


@dataclass(frozen=True)
class TrainReport:
    """What happened during training."""

    epochs_run: int
    best_epoch: int
    best_validation_mse: float
    seconds: float


def training_samples(
    series: npt.NDArray[np.float64], window: int, continuation: int
) -> npt.NDArray[np.float32]:
    """Every `window` + `continuation` + 1 points of `series`, in the window's own z units.

    The window (the first `window` points) is normalized exactly as the gateway
    does; the points after it are scaled by the same mean and std.
    """
    samples = sliding_window_view(series, window + continuation + 1)
    _, scaling = normalize(samples[:, :window])
    z: npt.NDArray[np.float64] = (samples - scaling.mean[:, None]) / scaling.std[:, None]
    return z.astype(np.float32)


def one_step_loss(network: Any, samples: torch.Tensor, window: int) -> torch.Tensor:
    """MSE of the next-value predictions from the window's end on (teacher-forced)."""
    predictions = network.predict_each_step(samples[:, :-1])[:, window - 1 :]
    return torch.nn.functional.mse_loss(predictions, samples[:, window:])


def train(config: TrainConfig, series: npt.NDArray[np.float64]) -> tuple[Any, TrainReport]:
    """Train a fresh network on `series` (the training part); return the best network."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    samples = torch.from_numpy(training_samples(series, config.window, config.continuation))
    cut = int(samples.shape[0] * (1 - config.validation_fraction))
    training, validation_samples = samples[:cut], samples[cut:]

    network = lstm_network().LSTMForecaster()
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    best = (float("inf"), 0, copy.deepcopy(network.state_dict()))
    started = time.perf_counter()
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        network.train()
        order = torch.from_numpy(rng.permutation(cut))
        total = 0.0
        for batch in torch.split(order, config.batch_size):
            optimizer.zero_grad()
            loss = one_step_loss(network, training[batch], config.window)
            torch.autograd.backward(loss)
            optimizer.step()
            total += loss.item() * batch.shape[0]
        network.eval()
        with torch.inference_mode():
            validation = one_step_loss(network, validation_samples, config.window).item()
        if validation < best[0]:
            best = (validation, epoch, copy.deepcopy(network.state_dict()))
        print(
            f"epoch {epoch:3d}  train mse {total / cut:.5f}  val mse {validation:.5f}  "
            f"best {best[0]:.5f} (epoch {best[1]})  {time.perf_counter() - started:5.1f}s",
            flush=True,
        )
        if epoch - best[1] >= config.patience:
            break
    network.load_state_dict(best[2])
    network.eval()
    report = TrainReport(epoch, best[1], best[0], round(time.perf_counter() - started, 2))
    return network, report


def evaluate(
    network: Any, window: int, series: npt.NDArray[np.float64], cut: int
) -> dict[str, Any]:
    """MAE and MASE at each horizon of the LSTM (served `forecast`), naive and seasonal naive."""
    forecast = lstm_network().forecast

    def predict(z: npt.NDArray[np.float32], horizon: int) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            result: npt.NDArray[np.float32] = forecast(
                network, torch.from_numpy(z), horizon
            ).numpy()
        return result

    scale = seasonal_naive_scale(series[:cut], SEASON)
    metrics: dict[str, Any] = {"mase_scale": round(scale, 6), "horizons": {}}
    for horizon in HORIZONS:
        backtest = Backtest.over_test_part(series, cut, horizon)
        maes = {
            "lstm": backtest.score(z_forecaster(predict), window),
            "naive": backtest.score(naive_forecast, 1),
            "seasonal_naive": backtest.mae(backtest.seasonal_naive(SEASON)),
        }
        metrics["horizons"][str(horizon)] = {
            "origins": int(backtest.origins.shape[0]),
            **{name: {"mae": round(m, 4), "mase": round(m / scale, 4)} for name, m in maes.items()},
        }
    return metrics


def check_reload(network: Any, weights: Path, window: int) -> None:
    """Load `weights` as Triton will (weights only) and check it forecasts as `network` does."""
    reloaded, metadata = lstm_network().load_checkpoint(weights)
    probe = torch.linspace(-1.5, 1.5, window).repeat(3, 1)
    forecast = lstm_network().forecast
    with torch.inference_mode():
        same = torch.equal(forecast(network, probe, 12), forecast(reloaded, probe, 12))
    if not same or int(metadata["window"]) != window:
        raise RuntimeError(f"{weights} does not reload to the trained network")


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, write the weights and the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", type=int, choices=sorted(WINDOWS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainConfig.max_epochs, help="max epochs")
    args = parser.parse_args(argv)
    config = TrainConfig(
        version=args.version, window=WINDOWS[args.version], seed=args.seed, max_epochs=args.epochs
    )
    series, dates = load_co2(), load_co2_dates()
    cut = train_size(series.shape[0])
    print(f"co2: {series.shape[0]} weekly points, training on the first {cut}; {config}")

    network, report = train(config, series[:cut])
    metrics = evaluate(network, config.window, series, cut)
    metadata = {
        "window": config.window,
        "seed": config.seed,
        "data": "statsmodels co2 (weekly, NaN interpolated)",
        "train_span": f"{dates[0]}..{dates[cut - 1]}",
        "train_points": cut,
        "best_epoch": report.best_epoch,
        "torch": str(torch.__version__),
    }
    weights = weights_path(config.version)
    lstm_network().save_checkpoint(network, weights, metadata)
    check_reload(network, weights, config.window)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results_path = RESULTS_DIR / f"lstm_v{config.version}.json"
    results = {"config": asdict(config), "training": asdict(report), **metrics}
    results_path.write_text(json.dumps(results, indent=2) + "\n")

    for horizon, row in metrics["horizons"].items():
        line = "  ".join(
            f"{name} {row[name]['mae']:.3f}/{row[name]['mase']:.3f}"
            for name in ("lstm", "naive", "seasonal_naive")
        )
        print(f"h={horizon:>2} MAE/MASE  {line}")
    print(f"trained in {report.seconds:.1f}s; wrote {weights.relative_to(REPO_ROOT)}")
    print(f"metrics: {results_path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
