"""The retry budget: retries allowed as a fraction of recent requests."""

from __future__ import annotations


class RetryBudget:
    """Retries allowed as a fraction of recent requests (a token bucket).

    Each request adds `ratio` tokens, each retry spends one: when Triton is
    down for everyone, retries stop instead of multiplying the load on its
    way back up. The bucket holds `cap` tokens plus one per request at the
    most requests ever in flight at Triton at once (filled as that peak
    rises): a replica that dies fails every request it holds at the same
    moment, and retrying each of those once, on another replica, adds no
    load beyond what Triton was already carrying.
    """

    def __init__(self, ratio: float, cap: float = 10.0) -> None:
        self.ratio = ratio
        self.base = cap
        self.cap = cap
        self.tokens = cap
        self.peak_in_flight = 0

    def on_request(self, in_flight: int = 0) -> None:
        """Credit one request; `in_flight` requests are at Triton now, this one included."""
        if in_flight > self.peak_in_flight:
            self.tokens += in_flight - self.peak_in_flight
            self.peak_in_flight = in_flight
            self.cap = self.base + in_flight
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one retry if the budget allows it."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
