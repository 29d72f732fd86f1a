"""Arms of another model ("<model>:<version>") in a split, a shadow and a fallback.

Parsing and catalog checks of the routing file, the routing decision over
arm labels (weights, sticky keys, readiness, eligibility), and the A/B
store's side: the report names each row's model, the verdict names the arm,
and calibration pools stay with the real (model, version).
"""

from __future__ import annotations

import random
import tomllib
from collections import Counter

import numpy as np
import pytest

from forecast_gateway.ab import arm_label, arm_of, arm_parts
from forecast_gateway.ab.aggregates import SCORED, UNSCORED, StoredPrediction
from forecast_gateway.ab.pools import add_cqr_scores, add_scores
from forecast_gateway.ab.records import Role
from forecast_gateway.ab.report import ModelAggregates, summarize, verdict
from forecast_gateway.ab.scoring import Moments
from forecast_gateway.ab.sequential import SequentialResult
from forecast_gateway.core.catalog import ModelCatalog, ModelSpec, VersionSpec, VersionState
from forecast_gateway.core.routing import (
    Decision,
    Fallback,
    NoEligibleVersion,
    Policy,
    Shadow,
    choose_version,
    sticky_version,
)
from forecast_gateway.core.routing_config import (
    RoutingConfigError,
    check_against_catalog,
    describe,
    parse_policies,
)

LSTM = "lstm_timeseries"
MA = "moving_average"
SN = "seasonal_naive"


def spec(name: str, versions: dict[str, VersionState] | None = None) -> ModelSpec:
    states = versions or {"1": VersionState.READY, "2": VersionState.READY}
    specs = {v: VersionSpec(v, state, 10, 10, 10) for v, state in states.items()}
    return ModelSpec(name, "", 12, 64, specs, configured_default="2")


SPECS = {LSTM: spec(LSTM), MA: spec(MA), SN: spec(SN, {"1": VersionState.READY})}


def parse(text: str) -> dict[str, Policy]:
    return parse_policies(tomllib.loads(text), "routing.toml")


# --- labels ------------------------------------------------------------------------------------


def test_arm_labels_round_trip() -> None:
    assert arm_label(SN, "1") == "seasonal_naive:1"
    assert arm_label(LSTM, "2", own=LSTM) == "2" == arm_label("", "2")
    assert arm_parts("seasonal_naive:1") == (SN, "1")
    assert arm_parts("2") == ("", "2")
    assert arm_of(LSTM, "seasonal_naive:1") == (SN, "1")
    assert arm_of(LSTM, "2") == (LSTM, "2")


# --- parsing and checks ------------------------------------------------------------------------


def test_a_split_shadow_and_fallback_may_name_another_models_version() -> None:
    policies = parse(
        """
        [models.lstm_timeseries]
        split = { "seasonal_naive:1" = 10, "2" = 80, "moving_average:1" = 10 }
        shadow = { version = "moving_average:2", percent = 50 }
        fallback = "seasonal_naive:1"
        """
    )
    policy = policies[LSTM]
    # own versions first (numeric), then other models' arms by label
    assert policy.split == (("2", 80.0), ("moving_average:1", 10.0), ("seasonal_naive:1", 10.0))
    assert policy.shadow == Shadow("moving_average:2", 50.0)
    assert policy.fallback == Fallback(SN, "1")
    assert describe(policy) == (
        "split 2=80 moving_average:1=10 seasonal_naive:1=10; shadow moving_average:2@50%; "
        "fallback seasonal_naive/1"
    )
    check_against_catalog(policies, SPECS, SPECS)


def test_a_fallback_string_without_version_is_the_models_default() -> None:
    assert parse('[models.lstm_timeseries]\nfallback = "moving_average"')[LSTM].fallback == (
        Fallback(MA, "")
    )


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('split = { "seasonal_naive:01" = 100 }', ["split: version key", "01"]),
        ('split = { ":1" = 100 }', ["split: version key", "<model>:<version>"]),
        ('split = { "seasonal_naive:" = 100 }', ["split: version key", "version number"]),
        ('split = { "lstm_timeseries:1" = 100 }', ["version of lstm_timeseries itself", "'1'"]),
        ('shadow = { version = "moving_average:x" }', ["shadow.version", "version number"]),
        ('fallback = "moving_average:"', ["fallback", "version number"]),
        ('fallback = ":1"', ["fallback", "<model>:<version>"]),
    ],
)
def test_malformed_arms_are_refused_naming_the_key(text: str, names: list[str]) -> None:
    with pytest.raises(RoutingConfigError) as raised:
        parse(f"[models.lstm_timeseries]\n{text}")
    for name in names:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            'split = { "2" = 90, "prophet:1" = 10 }',
            ["models.lstm_timeseries.split.prophet:1", "'prophet' is not served"],
        ),
        (
            'split = { "2" = 90, "seasonal_naive:3" = 10 }',
            ["split.seasonal_naive:3", "'seasonal_naive' has no version '3'", "versions: 1"],
        ),
        (
            'shadow = { version = "seasonal_naive:2" }',
            ["shadow.version", "'seasonal_naive' has no version '2'"],
        ),
        ('shadow = { version = "prophet:1" }', ["shadow.version", "'prophet' is not served"]),
        ('fallback = "seasonal_naive:4"', ["fallback.version", "has no version '4'"]),
    ],
)
def test_unknown_models_and_versions_of_arms_are_refused(text: str, names: list[str]) -> None:
    policies = parse(f"[models.lstm_timeseries]\n{text}")
    with pytest.raises(RoutingConfigError) as raised:
        check_against_catalog(policies, SPECS, SPECS)
    for name in names:
        assert name in str(raised.value)


def test_arms_follow_the_catalogs_routable_rule() -> None:
    """Discovered models: a routable one passes, an unknown one is refused once Triton reported."""
    policies = parse('[models.lstm_timeseries]\nsplit = { "2" = 90, "prophet:1" = 10 }')
    catalog = ModelCatalog(models=(), discover=True)
    catalog.replace({}, triton_up=False)  # before Triton reports: not told from a typo yet
    check_against_catalog(policies, {}, catalog.routable)
    catalog.replace(dict(SPECS), triton_up=True)
    with pytest.raises(RoutingConfigError, match="'prophet' is not served"):
        check_against_catalog(policies, SPECS, catalog.routable)


# --- routing over arm labels -------------------------------------------------------------------

SPLIT = Policy(split=(("2", 90.0), ("seasonal_naive:1", 10.0)))


def test_the_draw_follows_the_weights_and_the_route_names_the_serving_model() -> None:
    rng = random.Random(7)
    routes = [choose_version(SPECS[LSTM], "", "", SPLIT, rng, specs=SPECS) for _ in range(5000)]
    counts = Counter(r.label for r in routes)
    assert set(counts) == {"2", "seasonal_naive:1"}
    assert 0.08 < counts["seasonal_naive:1"] / 5000 < 0.12
    arm = next(r for r in routes if r.model)
    assert (arm.model, arm.version, arm.decision) == (SN, "1", Decision.WEIGHTED)
    own = next(r for r in routes if not r.model)
    assert (own.model, own.version, own.label) == ("", "2", "2")


def test_sticky_keys_are_hashed_over_arm_labels_and_stay_put() -> None:
    keys = [f"series-{i}" for i in range(2000)]
    placed = {k: choose_version(SPECS[LSTM], "", k, SPLIT, specs=SPECS).label for k in keys}
    assert placed == {k: sticky_version(LSTM, k, SPLIT.split) for k in keys}
    assert all(
        choose_version(SPECS[LSTM], "", k, SPLIT, specs=SPECS).decision is Decision.STICKY
        for k in keys[:10]
    )
    # raising the arm's weight only moves keys to it
    raised = Policy(split=(("2", 80.0), ("seasonal_naive:1", 20.0)))
    moved = {
        k: choose_version(SPECS[LSTM], "", k, raised, specs=SPECS).label
        for k in keys
        if choose_version(SPECS[LSTM], "", k, raised, specs=SPECS).label != placed[k]
    }
    assert moved and set(moved.values()) == {"seasonal_naive:1"}


def test_an_arm_not_ready_or_unknown_to_the_catalog_never_serves() -> None:
    down = {**SPECS, SN: spec(SN, {"1": VersionState.LOADING})}
    for specs in (down, {LSTM: SPECS[LSTM]}, None):
        routes = {
            choose_version(SPECS[LSTM], "", f"k{i}", SPLIT, specs=specs).label for i in range(300)
        }
        assert routes == {"2"}


def test_an_arm_that_cannot_serve_the_request_is_excluded_as_versions_are() -> None:
    def eligible(label: str) -> bool:
        return label != "seasonal_naive:1"  # e.g. not declared for the request's frequency

    rng = random.Random(1)
    routes = [choose_version(SPECS[LSTM], "", "", SPLIT, rng, eligible, SPECS) for _ in range(200)]
    assert {r.label for r in routes} == {"2"} and all(r.restricted for r in routes)
    only_arm = Policy(split=(("seasonal_naive:1", 100.0),))
    with pytest.raises(NoEligibleVersion) as raised:
        choose_version(SPECS[LSTM], "", "", only_arm, rng, eligible, SPECS)
    assert raised.value.candidates == ("seasonal_naive:1",)


def test_a_shadow_of_another_model_is_listed_when_ready() -> None:
    policy = Policy(shadow=Shadow("seasonal_naive:1", 100.0))
    assert choose_version(SPECS[LSTM], "", "", policy, specs=SPECS).shadows == ("seasonal_naive:1",)
    assert choose_version(SPECS[LSTM], "1", "", policy, specs=SPECS).shadows == (
        "seasonal_naive:1",
    )
    down = {**SPECS, SN: spec(SN, {"1": VersionState.UNAVAILABLE})}
    assert choose_version(SPECS[LSTM], "", "", policy, specs=down).shadows == ()
    # the shadow is the arm that serves: not run again
    both = Policy(split=(("seasonal_naive:1", 100.0),), shadow=Shadow("seasonal_naive:1", 100.0))
    route = choose_version(SPECS[LSTM], "", "", both, specs=SPECS)
    assert route.label == "seasonal_naive:1" and route.shadows == ()


# --- the store's side: rows, verdicts, pools ---------------------------------------------------


def _moments(values: list[float]) -> Moments:
    array = np.asarray(values)
    return Moments(array.size, float(array.mean()), float(array.var(ddof=1)))


def test_the_report_names_each_rows_model_and_the_arm_in_comparisons() -> None:
    aggregates = ModelAggregates()
    aggregates.counters = {"2": (30, 0), "seasonal_naive:1": (30, 0)}
    good = [0.4 + 0.01 * i for i in range(30)]
    bad = [0.9 + 0.01 * i for i in range(30)]
    for label, values in (("2", bad), ("seasonal_naive:1", good)):
        aggregates.moments[(SCORED, label, "")] = _moments([5.0] * 30)
        aggregates.moments[("mase", label, "")] = _moments(values)
        aggregates.moments[("mase_comparable", label, "")] = _moments(values)
    report = summarize(LSTM, "exp", aggregates)
    assert [(v.version, v.model) for v in report.versions] == [
        ("2", LSTM),
        ("seasonal_naive:1", SN),
    ]
    (comparison,) = report.comparisons
    assert (comparison.version_a, comparison.model_a) == ("2", LSTM)
    assert (comparison.version_b, comparison.model_b) == ("seasonal_naive:1", SN)
    assert comparison.conclusive
    assert comparison.verdict.startswith("seasonal_naive:1 is more accurate"), comparison.verdict


def test_an_inconclusive_verdict_names_versions_and_arms() -> None:
    result = SequentialResult("two-sample asymptotic confidence sequence", 5, 0.1, 0.5, -1, 1)
    words = verdict("2", "seasonal_naive:1", 0.5, 0.6, result)
    assert "(version 2) vs 0.6 (seasonal_naive:1)" in words, words


def test_calibration_and_cqr_scores_of_an_arm_go_to_its_own_model_and_version() -> None:
    horizon = 3
    bounds = np.tile(np.array([[-1.0], [1.0], [-2.0], [2.0], [-1.0], [0.0], [1.0]]), horizon)
    prediction = StoredPrediction(
        "seasonal_naive:1", Role.SERVED, np.zeros(horizon), UNSCORED, bounds.ravel(), 1.0, True
    )
    own = StoredPrediction("2", Role.SHADOW, np.zeros(horizon), UNSCORED)
    before = np.full(horizon, np.nan)
    after = np.array([0.5, 0.25, np.nan])
    pools: dict[tuple[str, str, int], list[float]] = {}
    cqr: dict[tuple[str, str, int, float], list[float]] = {}
    for p in (prediction, own):
        add_scores(pools, LSTM, p, before, after, 1.0)
        add_cqr_scores(cqr, LSTM, p, before, after, 1.0)
    assert pools == {
        (SN, "1", 0): [0.5],
        (SN, "1", 1): [0.25],
        (LSTM, "2", 0): [0.5],
        (LSTM, "2", 1): [0.25],
    }
    assert {key[:2] for key in cqr} == {(SN, "1")}
