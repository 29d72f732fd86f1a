import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from forecast_gateway.core.catalog import ModelSpec, VersionSpec, VersionState
from forecast_gateway.core.routing import (
    Decision,
    Fallback,
    NoEligibleVersion,
    Policy,
    Route,
    Shadow,
    choose_version,
    sticky_version,
)
from forecast_gateway.errors import NotFound, Unavailable


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


# --- A/B policies: weighted, sticky, shadow, fallback -------------------------------------------

AB = Policy(split=(("1", 10.0), ("2", 90.0)))
KEYS = [f"series-{i}" for i in range(10_000)]


def ab_spec(states: dict[str, VersionState] | None = None, default: str = "2") -> ModelSpec:
    return spec(states or {"1": READY, "2": READY}, default=default)


def counts(versions: list[str], order: list[str]) -> list[int]:
    tally = Counter(versions)
    assert set(tally) <= set(order)
    return [tally[v] for v in order]


def test_without_a_key_the_draw_follows_the_weights() -> None:
    rng = random.Random(20240601)
    routes = [choose_version(ab_spec(), "", policy=AB, rng=rng) for _ in range(10_000)]
    assert {r.decision for r in routes} == {Decision.WEIGHTED}
    observed = counts([r.version for r in routes], ["1", "2"])
    assert chisquare(observed, [1_000, 9_000]).pvalue > 0.01


def test_three_way_draw_follows_the_weights() -> None:
    policy = Policy(split=(("1", 50.0), ("2", 30.0), ("3", 20.0)))
    model = spec({"1": READY, "2": READY, "3": READY})
    rng = random.Random(7)
    versions = [choose_version(model, "", policy=policy, rng=rng).version for _ in range(10_000)]
    assert chisquare(counts(versions, ["1", "2", "3"]), [5_000, 3_000, 2_000]).pvalue > 0.01


def test_draw_renormalizes_among_ready_versions() -> None:
    policy = Policy(split=(("1", 50.0), ("2", 30.0), ("3", 20.0)))
    model = spec({"1": READY, "2": DOWN, "3": READY})
    rng = random.Random(11)
    versions = [choose_version(model, "", policy=policy, rng=rng).version for _ in range(7_000)]
    assert chisquare(counts(versions, ["1", "3"]), [5_000, 2_000]).pvalue > 0.01


def test_a_key_sticks_to_one_version_whatever_the_rng() -> None:
    first = {k: choose_version(ab_spec(), "", k, AB).version for k in KEYS[:500]}
    for seed in range(3):
        rng = random.Random(seed)
        for key, version in first.items():
            route = choose_version(ab_spec(), "", key, AB, rng)
            assert (route.version, route.decision) == (version, Decision.STICKY)


def test_sticky_placement_is_stable_across_processes() -> None:
    # Golden values: blake2b of (domain, model, version, key), never Python's
    # salted hash(). If this fails, every sticky key in production moves.
    weights = [("1", 50.0), ("2", 50.0)]
    got = [sticky_version("lstm_timeseries", f"store-{i}", weights) for i in range(12)]
    assert got == GOLDEN_50_50


GOLDEN_50_50 = ["1", "1", "2", "2", "2", "1", "2", "2", "2", "1", "2", "2"]


@pytest.mark.parametrize(
    "weights",
    [
        [("1", 90.0), ("2", 10.0)],
        [("1", 50.0), ("2", 30.0), ("3", 20.0)],
        [("1", 1.0), ("2", 99.0)],
    ],
)
def test_keys_spread_by_the_weights(weights: list[tuple[str, float]]) -> None:
    versions = [sticky_version("lstm_timeseries", key, weights) for key in KEYS]
    expected = [w / 100 * len(KEYS) for _, w in weights]
    assert chisquare(counts(versions, [v for v, _ in weights]), expected).pvalue > 0.01


def test_the_same_key_differs_between_models() -> None:
    weights = [("1", 50.0), ("2", 50.0)]
    a = [sticky_version("a", key, weights) for key in KEYS[:2_000]]
    b = [sticky_version("b", key, weights) for key in KEYS[:2_000]]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert 0.45 < agreement < 0.55


def test_90_10_to_80_20_moves_about_ten_percent_of_keys_all_to_v2() -> None:
    before = [sticky_version("lstm_timeseries", k, [("1", 90.0), ("2", 10.0)]) for k in KEYS]
    after = [sticky_version("lstm_timeseries", k, [("1", 80.0), ("2", 20.0)]) for k in KEYS]
    moves = Counter((b, a) for b, a in zip(before, after, strict=True) if b != a)
    assert set(moves) == {("1", "2")}
    assert moves["1", "2"] / len(KEYS) == pytest.approx(0.10, abs=0.01)


weight = st.integers(1, 99).map(float)


@settings(max_examples=60, deadline=None)
@given(
    others=st.lists(weight, min_size=1, max_size=3),
    old=weight,
    new=weight,
    keys=st.lists(st.text(max_size=12), min_size=1, max_size=50, unique=True),
)
def test_changing_one_weight_moves_keys_only_to_or_from_that_version(
    others: list[float], old: float, new: float, keys: list[str]
) -> None:
    fixed = [(str(i + 1), w) for i, w in enumerate(others)]
    changed = str(len(fixed) + 1)
    for key in keys:
        before = sticky_version("m", key, [*fixed, (changed, old)])
        after = sticky_version("m", key, [*fixed, (changed, new)])
        if new >= old:
            # raising a weight only moves keys TO it (and never away from it)
            assert after in (before, changed)
        if new <= old:
            # lowering a weight only moves keys AWAY from it
            assert before in (after, changed)


@given(st.text(max_size=20))
def test_removing_a_version_only_moves_its_own_keys(key: str) -> None:
    weights = [("1", 50.0), ("2", 30.0), ("3", 20.0)]
    before = sticky_version("m", key, weights)
    after = sticky_version("m", key, [w for w in weights if w[0] != "2"])
    assert before in (after, "2")


def test_a_down_version_loses_only_its_own_keys() -> None:
    up = spec({"1": READY, "2": READY, "3": READY})
    down = spec({"1": READY, "2": DOWN, "3": READY})
    policy = Policy(split=(("1", 50.0), ("2", 30.0), ("3", 20.0)))
    for key in KEYS[:2_000]:
        before = choose_version(up, "", key, policy).version
        after = choose_version(down, "", key, policy)
        assert after.decision is Decision.STICKY
        assert after.version != "2"
        assert before == "2" or after.version == before


def test_zero_weight_and_unknown_versions_never_serve() -> None:
    policy = Policy(split=(("1", 0.0), ("2", 60.0), ("9", 40.0)))
    rng = random.Random(3)
    for key in ["", *KEYS[:300]]:
        assert choose_version(ab_spec(), "", key, policy, rng).version == "2"


def test_no_ready_split_version_gets_the_default() -> None:
    model = spec({"1": DOWN, "2": DOWN, "3": READY}, default="3")
    policy = Policy(split=(("1", 50.0), ("2", 50.0)), fallback=Fallback("moving_average"))
    for key in ("", "store-1"):
        route = choose_version(model, "", key, policy)
        assert (route.version, route.decision) == ("3", Decision.DEFAULT)
        assert route.fallback == Fallback("moving_average")


def test_policy_without_split_gets_the_default() -> None:
    route = choose_version(ab_spec(default="1"), "", "k", Policy(fallback=Fallback("ma", "1")))
    assert (route.version, route.decision, route.fallback) == (
        "1",
        Decision.DEFAULT,
        Fallback("ma", "1"),
    )


def test_pinned_requests_ignore_the_split_and_carry_no_fallback() -> None:
    policy = Policy(split=(("1", 100.0),), fallback=Fallback("moving_average", "1"))
    for key in ("", "store-1"):
        route = choose_version(ab_spec(), "2", key, policy)
        assert route == Route("2", Decision.PINNED)


def test_pinned_errors_are_unchanged_with_a_policy() -> None:
    with pytest.raises(NotFound):
        choose_version(ab_spec(), "7", "k", AB)
    with pytest.raises(Unavailable):
        choose_version(ab_spec({"1": READY, "2": DOWN}), "2", "k", AB)
    with pytest.raises(Unavailable, match="no ready version"):
        choose_version(ab_spec({"1": DOWN, "2": DOWN}), "", "k", AB)


SHADOWED = Policy(split=AB.split, shadow=Shadow("1", 100.0))


def test_shadow_runs_beside_every_other_version_and_is_skipped_when_served() -> None:
    rng = random.Random(5)
    for key in ["", *KEYS[:300]]:
        route = choose_version(ab_spec(), "", key, SHADOWED, rng)
        assert route.shadows == (() if route.version == "1" else ("1",))
    assert choose_version(ab_spec(), "2", "", SHADOWED).shadows == ("1",)
    assert choose_version(ab_spec(), "1", "", SHADOWED).shadows == ()


def test_a_shadow_that_is_not_ready_is_skipped() -> None:
    route = choose_version(ab_spec({"1": DOWN, "2": READY}), "", "k", SHADOWED)
    assert (route.version, route.shadows) == ("2", ())


def test_shadow_percent_without_a_key_is_a_random_draw() -> None:
    policy = Policy(shadow=Shadow("1", 25.0))
    rng = random.Random(9)
    shadowed = sum(
        bool(choose_version(ab_spec(), "", "", policy, rng).shadows) for _ in range(8_000)
    )
    assert chisquare([shadowed, 8_000 - shadowed], [2_000, 6_000]).pvalue > 0.01


def test_shadow_percent_with_a_key_is_decided_by_the_key() -> None:
    policy = Policy(shadow=Shadow("1", 25.0))
    first = [bool(choose_version(ab_spec(), "", k, policy).shadows) for k in KEYS]
    again = [bool(choose_version(ab_spec(), "", k, policy, random.Random(1)).shadows) for k in KEYS]
    assert first == again
    assert sum(first) / len(KEYS) == pytest.approx(0.25, abs=0.015)
    wider = Policy(shadow=Shadow("1", 50.0))
    # raising the percent only adds keys
    assert all(
        choose_version(ab_spec(), "", k, wider).shadows
        for k, s in zip(KEYS, first, strict=True)
        if s
    )


@given(
    st.dictionaries(st.integers(1, 6).map(str), st.sampled_from(list(VersionState)), min_size=1),
    st.lists(st.tuples(st.integers(1, 6).map(str), st.integers(0, 100)), max_size=4),
    st.text(max_size=8),
)
def test_a_route_is_always_a_ready_version(
    states: dict[str, VersionState], split: list[tuple[str, int]], key: str
) -> None:
    model = spec(states)
    policy = Policy(split=tuple((v, float(w)) for v, w in dict(split).items()))
    if not model.ready_versions():
        with pytest.raises(Unavailable):
            choose_version(model, "", key, policy)
        return
    route = choose_version(model, "", key, policy, random.Random(0))
    assert model.versions[route.version].ready
    in_split = any(v == route.version and w > 0 for v, w in policy.split)
    if route.decision in (Decision.STICKY, Decision.WEIGHTED):
        assert in_split
        assert route.decision is (Decision.STICKY if key else Decision.WEIGHTED)
    else:
        assert route.decision is Decision.DEFAULT


def test_sticky_version_needs_a_positive_weight() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        sticky_version("m", "k", [("1", 0.0)])


# --- routing among eligible versions -----------------------------------------------------------

SPLIT = Policy(split=(("1", 10.0), ("2", 90.0)))


def only(*versions: str) -> Callable[[str], bool]:
    return lambda version: version in versions


def test_an_ineligible_split_version_is_left_out_and_the_route_says_so() -> None:
    rng = random.Random(5)
    model = spec({"1": READY, "2": READY}, default="2")
    routes = [choose_version(model, "", "", SPLIT, rng, only("1")) for _ in range(200)]
    assert {(r.version, r.decision, r.restricted) for r in routes} == {
        ("1", Decision.WEIGHTED, True)
    }
    unrestricted = choose_version(model, "", "", SPLIT, rng, only("1", "2"))
    assert not unrestricted.restricted


def test_weights_are_renormalised_over_the_eligible_versions() -> None:
    rng = random.Random(6)
    model = spec({"1": READY, "2": READY, "3": READY})
    policy = Policy(split=(("1", 20.0), ("2", 30.0), ("3", 50.0)))
    counts = Counter(
        choose_version(model, "", "", policy, rng, only("1", "3")).version for _ in range(5000)
    )
    assert set(counts) == {"1", "3"}
    assert chisquare([counts["1"], counts["3"]], [5000 * 20 / 70, 5000 * 50 / 70]).pvalue > 0.001


def test_a_sticky_key_is_deterministic_given_the_eligible_set() -> None:
    model = spec({"1": READY, "2": READY, "3": READY})
    policy = Policy(split=(("1", 20.0), ("2", 30.0), ("3", 50.0)))
    for key in (f"k{i}" for i in range(300)):
        full = choose_version(model, "", key, policy, None, only("1", "2", "3"))
        without_3 = choose_version(model, "", key, policy, None, only("1", "2"))
        assert without_3 == choose_version(model, "", key, policy, None, only("1", "2"))
        if full.version != "3":  # only the keys of the left-out version move
            assert without_3.version == full.version


def test_an_ineligible_default_gives_way_to_the_highest_eligible_version() -> None:
    model = spec({"1": READY, "2": READY, "3": READY}, default="3")
    route = choose_version(model, "", "", None, None, only("1", "2"))
    assert (route.version, route.decision, route.restricted) == ("2", Decision.DEFAULT, True)
    assert not choose_version(model, "", "", None, None, only("3")).restricted


def test_no_eligible_version_names_the_candidates() -> None:
    model = spec({"1": READY, "2": READY, "3": DOWN})
    with pytest.raises(NoEligibleVersion) as caught:
        choose_version(model, "", "", SPLIT, None, only())
    assert caught.value.candidates == ("1", "2")


def test_a_pinned_version_is_not_filtered() -> None:
    model = spec({"1": READY, "2": READY})
    route = choose_version(model, "2", "", SPLIT, None, only("1"))
    assert (route.version, route.decision, route.restricted) == ("2", Decision.PINNED, False)


def test_a_version_out_of_the_split_never_serves_even_when_the_split_cannot() -> None:
    model = spec({"1": READY, "2": READY}, default="1")
    policy = Policy(split=(("1", 0.0), ("2", 100.0)))
    with pytest.raises(NoEligibleVersion) as caught:  # v2 cannot serve; v1 has weight 0
        choose_version(model, "", "", policy, None, only("1"))
    assert caught.value.candidates == ("2",)
