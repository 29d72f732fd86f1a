import pytest
from hypothesis import given
from hypothesis import strategies as st

from forecast_gateway.catalog import ModelSpec, VersionSpec, VersionState
from forecast_gateway.errors import NotFound, Unavailable
from forecast_gateway.routing import Decision, choose_version


def spec(states: dict[str, VersionState], default: str = "") -> ModelSpec:
    versions = {v: VersionSpec(v, s, 10, 10, 10) for v, s in states.items()}
    return ModelSpec("m", "", 12, 64, versions, configured_default=default)


READY, DOWN = VersionState.READY, VersionState.UNAVAILABLE


def test_pinned_version_is_served_and_says_pinned() -> None:
    route = choose_version(spec({"1": READY, "2": READY}, default="2"), "1")
    assert (route.version, route.decision) == ("1", Decision.PINNED)


def test_unknown_pinned_version_is_not_found() -> None:
    with pytest.raises(NotFound, match="no version '7'"):
        choose_version(spec({"1": READY}), "7")


def test_pinned_version_not_ready_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        choose_version(spec({"1": READY, "2": DOWN}), "2")


def test_default_is_the_configured_version_when_ready() -> None:
    route = choose_version(spec({"1": READY, "2": READY}, default="1"), "")
    assert (route.version, route.decision) == ("1", Decision.DEFAULT)


def test_default_falls_back_to_highest_ready_version() -> None:
    assert (
        choose_version(spec({"1": READY, "2": DOWN, "10": READY}, default="2"), "").version == "10"
    )


def test_no_ready_version_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="no ready version"):
        choose_version(spec({"1": DOWN}), "")


@given(
    st.dictionaries(st.integers(1, 50).map(str), st.sampled_from(list(VersionState)), min_size=1)
)
def test_default_route_is_always_a_ready_version(states: dict[str, VersionState]) -> None:
    model = spec(states)
    if not model.ready_versions():
        with pytest.raises(Unavailable):
            choose_version(model, "")
    else:
        route = choose_version(model, "")
        assert model.versions[route.version].ready
        assert int(route.version) == max(int(v) for v in model.ready_versions())
