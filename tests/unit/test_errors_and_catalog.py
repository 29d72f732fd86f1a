from collections.abc import Mapping

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from forecast_gateway.api.convert import model_to_proto
from forecast_gateway.api.status import to_status
from forecast_gateway.backends.base import BackendModelConfig
from forecast_gateway.config import ModelConfig
from forecast_gateway.core.catalog import ModelCatalog, VersionState, build_spec, version_parameter
from forecast_gateway.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from tests.backend_double import PartialBackend

PARAMETERS = {
    "description": "d",
    "default_horizon": "12",
    "max_horizon": "64",
    "sequence_length": "10",
    "v2.sequence_length": "52",
    "v2.description": "yearly window",
}


def unpack_details(status: grpc.Status) -> list[object]:
    (_key, blob), *_ = [t for t in status.trailing_metadata if t[0] == "grpc-status-details-bin"]
    proto = status_pb2.Status.FromString(blob)
    unpacked: list[object] = []
    for any_message in proto.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if any_message.Is(kind.DESCRIPTOR):
                message = kind()
                any_message.Unpack(message)
                unpacked.append(message)
    return unpacked


def test_invalid_argument_carries_bad_request_and_error_info() -> None:
    error = InvalidArgument.of(
        [FieldViolation("history", "is empty"), FieldViolation("horizon", "< 0")]
    )
    status = to_status(error, "req-1")
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    info, bad_request = unpack_details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, info.metadata["request_id"]) == (
        "INVALID_ARGUMENT",
        "forecast.v1",
        "req-1",
    )
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["history", "horizon"]
    assert ("x-request-id", "req-1") in status.trailing_metadata


def test_version_parameter_prefers_the_version_key() -> None:
    assert version_parameter(PARAMETERS, "sequence_length", "2") == "52"
    assert version_parameter(PARAMETERS, "sequence_length", "1") == "10"
    assert version_parameter(PARAMETERS, "missing", "1") is None


def test_build_spec_reads_parameters_and_states() -> None:
    spec = build_spec(ModelConfig("m", "1"), PARAMETERS, {"1": "READY", "2": "UNAVAILABLE"})
    assert spec.versions["2"].sequence_length == 52
    assert spec.versions["2"].min_sequence_length == 52
    assert spec.versions["2"].description == "yearly window"
    assert spec.versions["2"].state is VersionState.UNAVAILABLE
    assert spec.default_version() == "1"
    assert (spec.default_horizon, spec.max_horizon) == (12, 64)


def test_a_version_without_a_window_is_unavailable_with_the_reason() -> None:
    spec = build_spec(
        ModelConfig("m"), {"default_horizon": "1", "max_horizon": "2"}, {"1": "READY"}
    )
    version = spec.versions["1"]
    assert version.state is VersionState.UNAVAILABLE and version.contract is None
    assert version.unavailable_reason == "config.pbtxt: sequence_length: required (a whole number)"
    assert spec.ready_versions() == []


def test_catalog_distinguishes_unknown_from_not_yet_reported_models() -> None:
    catalog = ModelCatalog(models=(ModelConfig("m"),))
    with pytest.raises(NotFound) as not_found:
        catalog.get("other")
    assert not_found.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(Unavailable):
        catalog.get("m")
    assert not catalog.all_ready()


def test_a_version_marked_unavailable_leaves_routing_until_the_next_refresh() -> None:
    spec = build_spec(ModelConfig("m"), PARAMETERS, {"1": "READY", "2": "READY"})
    catalog = ModelCatalog(models=(ModelConfig("m"),), specs={"m": spec}, triton_up=True)
    catalog.mark_unavailable("m", "2")
    assert catalog.get("m").ready_versions() == ["1"]
    assert catalog.get("m").default_version() == "1"
    assert spec.versions["2"].ready  # the old snapshot is untouched (readers may hold it)
    catalog.mark_unavailable("m", "9")  # unknown versions and models are ignored
    catalog.mark_unavailable("x", "1")
    assert catalog.get("m").ready_versions() == ["1"]


class SlowTriton(PartialBackend):
    """A Triton index read before a version went, answered after the gateway marked it."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog

    @property
    def replicas_ready(self) -> Mapping[tuple[str, str], int]:
        return {("m", "1"): 2, ("m", "2"): 1}

    async def version_states(self) -> dict[str, dict[str, str]]:
        states = {"m": {"1": "READY", "2": "READY"}}  # read before v2 went
        self.catalog.mark_unavailable("m", "2")  # meanwhile a call learns v2 is gone
        return states

    async def model_config(self, model: str) -> BackendModelConfig:
        return BackendModelConfig(PARAMETERS, 8)


async def test_a_refresh_that_read_triton_before_a_mark_keeps_it() -> None:
    spec = build_spec(ModelConfig("m"), PARAMETERS, {"1": "READY", "2": "READY"})
    catalog = ModelCatalog(models=(ModelConfig("m"),), specs={"m": spec}, triton_up=True)
    await catalog.refresh(SlowTriton(catalog))
    assert catalog.get("m").ready_versions() == ["1"]
    await catalog.refresh(Fresh(catalog))
    assert catalog.get("m").ready_versions() == ["1", "2"]  # a later refresh decides


async def test_a_refresh_counts_the_replicas_serving_each_version() -> None:
    catalog = ModelCatalog(models=(ModelConfig("m"),))
    await catalog.refresh(Fresh(catalog))
    versions = catalog.get("m").versions
    assert (versions["1"].replicas_ready, versions["2"].replicas_ready) == (2, 1)
    assert [v.replicas_ready for v in model_to_proto(catalog.get("m")).versions] == [2, 1]


class Fresh(SlowTriton):
    """A refresh that began after the mark: Triton's own view wins."""

    async def version_states(self) -> dict[str, dict[str, str]]:
        return {"m": {"1": "READY", "2": "READY"}}
