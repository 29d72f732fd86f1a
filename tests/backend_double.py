"""A base for the unit tests' stand-ins of `InferenceBackend`: every call it does not play fails.

A stand-in subclasses `PartialBackend` and overrides only the calls its test
plays (a scripted `forecast`, a scripted catalog read). It stays a whole
`InferenceBackend`, so mypy checks it wherever it is passed as one (Coalescer,
Forecaster, ModelCatalog.refresh) and it cannot drift from the protocol; a
call it does not play raises NotImplementedError instead of answering
something the test never meant. `forecast_gateway.backends.fake.FakeBackend`
is the stand-in that plays every call.
"""

from __future__ import annotations

from collections.abc import Mapping

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, BackendModelConfig, Rows, Signature


class PartialBackend:
    """`InferenceBackend` with no call played: a stand-in overrides the ones it plays."""

    @property
    def replicas_ready(self) -> Mapping[tuple[str, str], int]:
        raise NotImplementedError(f"{type(self).__name__} does not play replicas_ready")

    @property
    def version_reasons(self) -> Mapping[tuple[str, str], str]:
        return {}

    async def forecast(
        self,
        model: str,
        version: str,
        windows: Rows,
        horizon: int,
        timeout_s: float,
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> Rows:
        raise NotImplementedError(f"{type(self).__name__} does not play forecast")

    async def is_ready(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} does not play is_ready")

    async def version_states(self) -> dict[str, dict[str, str]]:
        raise NotImplementedError(f"{type(self).__name__} does not play version_states")

    async def model_config(self, model: str) -> BackendModelConfig:
        raise NotImplementedError(f"{type(self).__name__} does not play model_config")

    async def close(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not play close")
