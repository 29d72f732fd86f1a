"""Triton's own view of a cell: inference statistics deltas, in perf_analyzer's terms.

``inference_count / execution_count`` over a cell is the average batch the
dynamic batcher achieved; queue and compute-infer times are per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TritonCounters:
    """Cumulative counters of one model version (from get_inference_statistics)."""

    requests: int = 0
    inferences: int = 0
    executions: int = 0
    queue_ns: int = 0
    compute_infer_ns: int = 0

    @classmethod
    def from_json(cls, statistics: dict[str, Any]) -> TritonCounters:
        """Parse ``get_inference_statistics(..., as_json=True)`` (int64 come as strings)."""
        models = statistics.get("model_stats") or [{}]
        model = models[0]
        stats = model.get("inference_stats", {})

        def number(section: str, key: str) -> int:
            return int(stats.get(section, {}).get(key, 0))

        return cls(
            requests=number("success", "count"),
            inferences=int(model.get("inference_count", 0)),
            executions=int(model.get("execution_count", 0)),
            queue_ns=number("queue", "ns"),
            compute_infer_ns=number("compute_infer", "ns"),
        )


def delta(start: TritonCounters, end: TritonCounters) -> dict[str, float | int | None]:
    """What Triton did between two readings; None where nothing ran."""
    requests = end.requests - start.requests
    inferences = end.inferences - start.inferences
    executions = end.executions - start.executions
    return {
        "requests": requests,
        "inferences": inferences,
        "executions": executions,
        "avg_batch": round(inferences / executions, 2) if executions else None,
        "queue_us": round((end.queue_ns - start.queue_ns) / requests / 1e3, 1)
        if requests
        else None,
        "compute_infer_us": round(
            (end.compute_infer_ns - start.compute_infer_ns) / requests / 1e3, 1
        )
        if requests
        else None,
    }
