"""Train the global quantile MLP on the multi-frequency corpus and export it to ONNX.

    python -m training.train_quantile [--seed 0] [--steps N]

Samples are random windows of `WINDOW` points from every training series
(the real series' training parts and the synthetic ones) with the up to
`HORIZON` points after them as targets (a mask covers targets past a short
series' end). Each batch mixes real and synthetic windows at fixed shares,
so the few real series are not drowned out. The loss is the pinball loss
of every level and step in the window's own z units (what the network
predicts). AdamW with a cosine learning-rate decay, a fixed number of
steps, 2 threads. The graph goes to model_repository/quantile_mlp/1/model.onnx
(checked against torch in onnxruntime), the report to
training/results/quantile_mlp.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.corpus import Series, synthetic_series, training_corpus
from training.quantile_network import HORIZON, LEVELS, WINDOW, QuantileMLP
from training.served import MODEL_REPOSITORY, REPO_ROOT

ONNX_PATH = MODEL_REPOSITORY / "quantile_mlp" / "1" / "model.onnx"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "quantile_mlp.json"
TARGET_CLIP = 50.0  # z units: a level shift of 50 window deviations is not learnt from
VALIDATION_SEED = 500


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run."""

    seed: int = 0
    steps: int = 6000
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    real_share: float = 0.3
    threads: int = 2
    validate_every: int = 500


@dataclass(frozen=True)
class Batch:
    """Raw windows [B, WINDOW], the raw points after them [B, HORIZON], which of those exist."""

    history: npt.NDArray[np.float32]
    target: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]


class WindowSampler:
    """Draws random windows (and the points after them) from a set of series."""

    def __init__(self, series: list[Series], window: int = WINDOW, horizon: int = HORIZON):
        usable = [s.values for s in series if s.values.shape[0] > window]
        if not usable:
            raise ValueError("no series is longer than the window")
        self.window, self.horizon = window, horizon
        self.flat = np.concatenate([*usable, np.zeros(horizon)])
        lengths = np.array([v.shape[0] for v in usable])
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.ends = self.starts + lengths
        self.origins = lengths - window  # window starts with at least one target point
        weights = np.sqrt(self.origins.astype(np.float64))  # long series count, not linearly
        self.weights = weights / weights.sum()

    def sample(self, rng: np.random.Generator, count: int) -> Batch:
        """`count` windows: a series by weight, then a uniform origin in it."""
        which = rng.choice(self.weights.shape[0], size=count, p=self.weights)
        begin = self.starts[which] + (rng.random(count) * self.origins[which]).astype(np.int64)
        history = self.flat[begin[:, None] + np.arange(self.window)]
        steps = begin[:, None] + self.window + np.arange(self.horizon)
        mask = steps < self.ends[which][:, None]
        target = np.where(mask, self.flat[np.minimum(steps, self.flat.shape[0] - 1)], 0.0)
        return Batch(history.astype(np.float32), target.astype(np.float32), mask)


def mixed_batch(
    samplers: tuple[WindowSampler, WindowSampler], share: float, rng: np.random.Generator, size: int
) -> Batch:
    """A batch with `share` of its windows from the first sampler, the rest from the second."""
    first = round(size * share)
    a, b = samplers[0].sample(rng, first), samplers[1].sample(rng, size - first)
    return Batch(
        np.concatenate([a.history, b.history]),
        np.concatenate([a.target, b.target]),
        np.concatenate([a.mask, b.mask]),
    )


def pinball_loss(network: QuantileMLP, batch: Batch) -> torch.Tensor:
    """Mean pinball loss over levels and existing steps, in each window's z units."""
    history = torch.from_numpy(batch.history)
    z, mean, std = network.scaled(history)
    zero = torch.clamp(-mean / std, -10.0, 10.0) / 10.0
    quantiles = network.z_quantiles(z, zero)
    target = torch.clamp((torch.from_numpy(batch.target) - mean) / std, -TARGET_CLIP, TARGET_CLIP)
    levels = torch.tensor(LEVELS, dtype=torch.float32)
    error = target.unsqueeze(2) - quantiles
    loss = torch.maximum(levels * error, (levels - 1.0) * error).mean(dim=2)
    mask = torch.from_numpy(batch.mask).to(torch.float32)
    return (loss * mask).sum() / mask.sum()


def validation_batch(size: int = 4096) -> Batch:
    """Fixed windows of synthetic series from a seed used neither for training nor evaluation."""
    series = [
        s
        for alias in ("h", "D", "W", "MS", "QS", "YS")
        for s in synthetic_series(alias, 20, VALIDATION_SEED)
    ]
    return WindowSampler(series).sample(np.random.default_rng(VALIDATION_SEED), size)


def train(config: TrainConfig, corpus: list[Series]) -> tuple[QuantileMLP, dict[str, Any]]:
    """Train a fresh network for `config.steps` steps; return it with a report."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    real = WindowSampler([s for s in corpus if s.source != "synthetic"])
    synthetic = WindowSampler([s for s in corpus if s.source == "synthetic"])
    validation = validation_batch()
    network = QuantileMLP()
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.05
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    running = 0.0
    for step in range(1, config.steps + 1):
        network.train()
        batch = mixed_batch((real, synthetic), config.real_share, rng, config.batch_size)
        optimizer.zero_grad()
        loss = pinball_loss(network, batch)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % config.validate_every == 0 or step == config.steps:
            network.eval()
            with torch.inference_mode():
                score = pinball_loss(network, validation).item()
            seconds = time.perf_counter() - started
            history.append(
                {
                    "step": step,
                    "train": running / config.validate_every,
                    "validation": score,
                    "seconds": round(seconds, 1),
                }
            )
            print(
                f"step {step:5d}  train pinball {running / config.validate_every:.4f}  "
                f"validation {score:.4f}  {seconds:6.1f}s",
                flush=True,
            )
            running = 0.0
    network.eval()
    report = {
        "seconds": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in network.parameters()),
        "training_windows": {
            "real_series": int(real.origins.shape[0]),
            "synthetic_series": int(synthetic.origins.shape[0]),
        },
        "history": history,
    }
    return network, report


def export(network: QuantileMLP, path: Path, metadata: dict[str, str]) -> None:
    """Write the network as one self-contained ONNX file (dynamic batch) with `metadata`."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(4, network.window) * 10 + 100
    batch = torch.export.Dim("rows", min=1, max=4096)
    torch.onnx.export(
        network,
        (example,),
        str(path),
        input_names=["HISTORY"],
        output_names=["FORECAST", "QUANTILES"],
        dynamo=True,
        external_data=False,
        dynamic_shapes=({0: batch},),
    )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def check_export(network: QuantileMLP, path: Path) -> float:
    """Largest relative difference between onnxruntime and torch on a mixed probe batch."""
    import onnxruntime

    rng = np.random.default_rng(0)
    probe = np.concatenate(
        [
            rng.normal(300, 40, (3, network.window)),
            np.zeros((1, network.window)),
            np.full((1, network.window), 7.5),
            np.cumsum(rng.normal(0, 1, (3, network.window)), axis=1),
        ]
    ).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    median, quantiles = session.run(None, {"HISTORY": probe})
    with torch.inference_mode():
        expected = network(torch.from_numpy(probe))[1].numpy()
    if quantiles.shape != (probe.shape[0], network.horizon, len(LEVELS)):
        raise RuntimeError(f"{path}: QUANTILES has shape {quantiles.shape}")
    scale = np.maximum(np.abs(expected), 1.0)
    difference = float(np.max(np.abs(quantiles - expected) / scale))
    if difference > 1e-4 or not np.array_equal(median, quantiles[:, :, LEVELS.index(0.5)]):
        raise RuntimeError(f"{path} does not compute what the trained network does ({difference})")
    return difference


def main(argv: list[str] | None = None) -> None:
    """Train, export, check the export, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--real-share", type=float, default=TrainConfig.real_share)
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, steps=args.steps, real_share=args.real_share)
    corpus = training_corpus()
    print(
        f"corpus: {len(corpus)} series, {sum(s.values.shape[0] for s in corpus)} points; {config}"
    )
    network, report = train(config, corpus)
    metadata = {
        "window": str(WINDOW),
        "horizon": str(HORIZON),
        "levels": ",".join(map(str, LEVELS)),
        "seed": str(config.seed),
        "torch": str(torch.__version__),
        "data": "statsmodels series (training parts) + synthetic series (training/corpus.py)",
    }
    export(network, ONNX_PATH, metadata)
    difference = check_export(network, ONNX_PATH)
    report |= {"onnx_bytes": ONNX_PATH.stat().st_size, "onnx_max_relative_difference": difference}
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(
        json.dumps({"config": asdict(config), "training": report}, indent=2) + "\n"
    )
    print(
        f"trained in {report['seconds']:.1f}s; wrote {ONNX_PATH.relative_to(REPO_ROOT)} "
        f"({report['onnx_bytes'] / 1e6:.2f} MB; onnxruntime vs torch {difference:.1e})"
    )


if __name__ == "__main__":
    main()
