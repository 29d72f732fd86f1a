"""The hand-written server Triton replaced: sync grpcio, a thread pool, one torch pass per request.

It loads the same weights through model_repository/lstm_timeseries/lstm_network.py
and does the same work per series as gateway + Triton (z-score the window,
autoregressive LSTM forecast, map back), but with no batching. The service
has no .proto: a generic handler takes raw bytes (``<i4`` horizon, then the
history as ``<f4``) and answers the forecast as ``<f4`` bytes.

Run as ``python -m bench.baseline --port 0``; it writes ``PORT <n>`` on stdout
once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LSTM_DIR = ROOT / "model_repository" / "lstm_timeseries"
SERVICE = "baseline.Forecaster"
METHOD = f"/{SERVICE}/Forecast"
WORKERS = 10


def encode_request(history: np.ndarray[Any, Any], horizon: int) -> bytes:
    """The request bytes: horizon as little-endian int32, then the history as float32."""
    return bytes(np.int32(horizon).astype("<i4").tobytes() + history.astype("<f4").tobytes())


def decode_request(payload: bytes) -> tuple[np.ndarray[Any, Any], int]:
    """Inverse of `encode_request`."""
    horizon = int(np.frombuffer(payload[:4], dtype="<i4")[0])
    return np.frombuffer(payload[4:], dtype="<f4").astype(np.float64), horizon


def load_network_module() -> ModuleType:
    """Import model_repository/lstm_timeseries/lstm_network.py by path (it is not a package)."""
    sys.dont_write_bytecode = True  # no __pycache__ inside model_repository/
    spec = importlib.util.spec_from_file_location("lstm_network", LSTM_DIR / "lstm_network.py")
    if spec is None or spec.loader is None:
        raise ImportError("cannot import lstm_network.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Forecaster:
    """One request at a time: normalize, forecast with torch, denormalize."""

    def __init__(self, version: int) -> None:
        self.lstm = load_network_module()
        self.network, self.metadata = self.lstm.load_checkpoint(
            LSTM_DIR / str(version) / "model.pt"
        )
        self.window = int(self.metadata["window"])

    def forecast(self, history: np.ndarray[Any, Any], horizon: int) -> np.ndarray[Any, Any]:
        """Z-score the last window, run the LSTM, map the forecast back (float64)."""
        window = history[-self.window :]
        mean = float(window.mean())
        std = max(float(window.std()), 1e-9 * max(1.0, abs(mean)))
        z = torch.from_numpy(((window - mean) / std).astype(np.float32)).unsqueeze(0)
        with torch.inference_mode():
            output = self.lstm.forecast(self.network, z, horizon)[0].numpy()
        result: np.ndarray[Any, Any] = output.astype(np.float64) * std + mean
        return result

    def warm_up(self, pool: futures.ThreadPoolExecutor, workers: int) -> None:
        """Run a few forecasts on every pool thread: torch's first calls on a thread are slow."""
        history = np.linspace(300.0, 310.0, self.window)
        tasks = [pool.submit(self.forecast, history, 5) for _ in range(4 * workers)]
        for task in tasks:
            task.result()

    def __call__(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        """Answer one raw request."""
        history, horizon = decode_request(payload)
        if history.shape[0] < self.window or not 1 <= horizon <= 64:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad history or horizon")
        return bytes(self.forecast(history, horizon).astype("<f4").tobytes())


def serve(port: int, workers: int, version: int, threads: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    torch.set_num_threads(threads)
    forecaster = Forecaster(version)
    pool = futures.ThreadPoolExecutor(max_workers=workers)
    forecaster.warm_up(pool, workers)
    server = grpc.server(pool)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Forecast": grpc.unary_unary_rpc_method_handler(forecaster)}
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    stop.wait()
    server.stop(grace=1).wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=WORKERS, help="thread-pool size")
    parser.add_argument("--version", type=int, default=1, help="lstm_timeseries version")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    serve(args.port, args.workers, args.version, args.torch_threads)


if __name__ == "__main__":
    main()
