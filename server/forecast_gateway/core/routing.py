"""Routing: which version of a model serves a request, and why.

The one place where that decision is made. Pure functions of the request,
the catalog's spec and the model's routing policy (`routing_config.py` loads
policies from `config/routing.toml`), so they are unit-tested without I/O.

- A request that names a version gets it (PINNED), or an error.
- A model with a weighted split: a request with a routing key is placed by
  weighted rendezvous hashing of (model, version, key), so a key stays on one
  version (STICKY); a request without a key gets a random draw by the
  weights (WEIGHTED). Only ready versions take part.
- Otherwise, or when no split version is ready: the model's default (DEFAULT).
- Only versions that can serve the request take part in an unpinned draw
  (`eligible`: history long enough for their window, horizon within range);
  weights are renormalised over them and the route says it was restricted.
  With none eligible, `NoEligibleVersion` lets the caller name the smallest
  requirement.

The route also lists shadow versions (run on a copy of the request, never
returned) and the model's fallback. See docs/routing.md.

A split or a shadow may name a version of another model by its arm label,
"<model>:<version>" ("seasonal_naive:1"; `ab.arm_label`): it is drawn,
hashed and checked for readiness like a version of the model itself (the
other model's spec comes from `specs`), and the route says which model
serves (`Route.model`).
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from forecast_gateway.ab import arm_label, arm_parts
from forecast_gateway.core.catalog import ModelSpec
from forecast_gateway.errors import NotFound, Unavailable, shown

_RANDOM = random.Random()
_HASH_DOMAIN_ROUTE = "route"
_HASH_DOMAIN_SHADOW = "shadow"


class Decision(enum.Enum):
    """How the version was chosen (mirrors forecast.v1.RoutingDecision)."""

    PINNED = "pinned"
    DEFAULT = "default"
    WEIGHTED = "weighted"
    STICKY = "sticky"
    FALLBACK = "fallback"


@dataclass(frozen=True)
class Shadow:
    """A version that also runs on `percent` of the model's requests; never returned.

    `version`: a version of the model, or the arm label of another model's ("m:v").
    """

    version: str
    percent: float


@dataclass(frozen=True)
class Fallback:
    """What answers when the chosen version fails; `version` "" = that model's default."""

    model: str
    version: str = ""


@dataclass(frozen=True)
class Policy:
    """A model's routing policy: weighted split (arm label, weight), shadow, fallback.

    An arm label is a version of the model ("2") or of another model
    ("seasonal_naive:1").

    `experiment` names the A/B experiment its forecasts are recorded under
    ("" = the default experiment); a new name starts fresh counts and scores.
    """

    split: tuple[tuple[str, float], ...] = ()
    shadow: Shadow | None = None
    fallback: Fallback | None = None
    experiment: str = ""


@dataclass(frozen=True)
class Route:
    """The version that will serve a request, the reason, and what else runs.

    `restricted`: versions the policy (or the default) would have drawn from
    were left out because they cannot serve this request. `model`: the model
    whose `version` serves when it is not the request's ("" = the request's
    own: a split arm of another model). `shadows` are arm labels.
    """

    version: str
    decision: Decision
    shadows: tuple[str, ...] = ()
    fallback: Fallback | None = None
    restricted: bool = False
    model: str = ""

    @property
    def label(self) -> str:
        """The arm label of the serving version in the request model's experiment."""
        return arm_label(self.model, self.version)


class NoEligibleVersion(Exception):
    """No ready version can serve the request; `candidates` are the ready ones considered."""

    def __init__(self, candidates: Sequence[str]) -> None:
        super().__init__(f"no eligible version among {list(candidates)}")
        self.candidates = tuple(candidates)


def choose_version(
    spec: ModelSpec,
    requested: str,
    routing_key: str = "",
    policy: Policy | None = None,
    rng: random.Random | None = None,
    eligible: Callable[[str], bool] | None = None,
    specs: Mapping[str, ModelSpec] | None = None,
) -> Route:
    """Pick the version for a request that names `requested` ("" = let the gateway choose).

    A pinned version must be one the model has (else NOT_FOUND) and be ready
    (else UNAVAILABLE: it may come back); a pin carries no fallback, since
    the caller asked for that version. An unpinned request follows the
    policy's split among its ready versions (STICKY with a routing key,
    WEIGHTED without), else gets the model's default (UNAVAILABLE if the
    model has no ready version at all). `rng` drives the random draws
    (weighted choice, shadow percent without a key); tests pass a seeded one.

    `eligible(version)` says whether a version can serve the request; an
    unpinned request is routed among eligible versions only (the sticky hash
    of a key is then taken over the eligible versions: removing one only
    moves the keys it had). No eligible version (among the split's, when the
    model has a split with a ready version: a version out of the split or of
    weight 0 never serves): NoEligibleVersion. A pinned version is not
    filtered: its own error is the answer.

    Split and shadow entries are arm labels; `specs` (the catalog's) gives
    the readiness of another model's versions (without it, or without that
    model, its arms are not ready); `eligible` gets labels too.
    """
    rng = rng or _RANDOM
    others = specs or {}
    if requested:
        _check_pinned(spec, requested)
        return Route(
            version=requested,
            decision=Decision.PINNED,
            shadows=_shadows(spec, policy, requested, routing_key, rng, others),
        )
    can_serve = eligible or _always
    ready = spec.ready_versions()
    split = (
        [(v, w) for v, w in policy.split if w > 0 and arm_ready(spec, v, others)] if policy else []
    )
    weights = [(v, w) for v, w in split if can_serve(v)]
    if split and not weights:  # the split's versions cannot serve it: never a version out of it
        raise NoEligibleVersion([v for v, _ in split])
    if weights and routing_key:
        version, decision = sticky_version(spec.name, routing_key, weights), Decision.STICKY
    elif weights:
        version, decision = _draw(weights, rng), Decision.WEIGHTED
    else:
        version, decision = _default(spec, ready, can_serve), Decision.DEFAULT
    restricted = len(weights) < len(split) or (not split and version != spec.default_version())
    model, served = arm_parts(version)
    return Route(
        version=served,
        decision=decision,
        shadows=_shadows(spec, policy, version, routing_key, rng, others),
        fallback=policy.fallback if policy else None,
        restricted=restricted,
        model=model,
    )


def _always(version: str) -> bool:
    return True


def arm_ready(spec: ModelSpec, label: str, specs: Mapping[str, ModelSpec]) -> bool:
    """Whether an arm label's version is ready: `spec`'s own, or another model's in `specs`."""
    model, version = arm_parts(label)
    owner = spec if not model or model == spec.name else specs.get(model)
    state = owner.versions.get(version) if owner is not None else None
    return state is not None and state.ready


def sticky_version(model: str, key: str, weights: Sequence[tuple[str, float]]) -> str:
    """The version a routing key sticks to: weighted rendezvous (highest random weight) hashing.

    Versions are arm labels: an arm of another model ("seasonal_naive:1")
    is hashed by its label, so its keys stay with it like any version's.

    Every version with a positive weight w scores -w / ln(u), u being the
    hash of (model, version, key) mapped into (0, 1); the highest score wins.
    A key lands on a version with probability w / sum(w), and since each
    version's score depends only on its own weight, raising one weight only
    moves keys to that version, lowering it only moves keys away from it,
    and removing a version only moves the keys it had. Deterministic across
    processes (blake2b, never Python's salted hash()).
    """
    best: tuple[float, str] | None = None
    for version, weight in weights:
        if weight <= 0:
            continue
        score = -weight / math.log(_unit(_HASH_DOMAIN_ROUTE, model, version, key))
        if best is None or (score, version) > best:
            best = (score, version)
    if best is None:
        raise ValueError(f"no version of model {model!r} has a positive weight: {weights!r}")
    return best[1]


def _unit(*parts: str) -> float:
    """A uniform number in the open interval (0, 1) from the hash of `parts`.

    Each part is length-prefixed, so ("ab", "c") and ("a", "bc") differ. The
    top 52 bits of the digest give (n + 0.5) / 2**52, exactly representable,
    never 0 or 1, so ln(u) is finite and negative.
    """
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    bits = int.from_bytes(digest.digest(), "big") >> 12
    return (bits + 0.5) / 2.0**52


def _check_pinned(spec: ModelSpec, requested: str) -> None:
    version = spec.versions.get(requested)
    if version is None:
        known = ", ".join(sorted(spec.versions, key=int)) or "none"
        raise NotFound(
            f"model {spec.name!r} has no version {shown(requested)}; versions: {known}",
            reason="VERSION_NOT_FOUND",
            metadata={"model": spec.name, "version": requested},
        )
    if not version.ready:
        raise Unavailable(
            f"version {shown(requested)} of model {spec.name!r} is {version.state.value}",
            reason="VERSION_UNAVAILABLE",
            metadata={"model": spec.name, "version": requested},
        )


def _default(spec: ModelSpec, ready: Sequence[str], can_serve: Callable[[str], bool]) -> str:
    """The model's default version, else the highest ready version that can serve the request."""
    default = spec.default_version()
    if default is None:
        raise Unavailable(
            f"model {spec.name!r} has no ready version",
            reason="MODEL_UNAVAILABLE",
            metadata={"model": spec.name},
        )
    if can_serve(default):
        return default
    others = sorted((v for v in ready if can_serve(v)), key=int, reverse=True)
    if not others:
        raise NoEligibleVersion(ready)
    return others[0]


def _draw(weights: Sequence[tuple[str, float]], rng: random.Random) -> str:
    """A random version, each with probability weight / sum of the weights given."""
    versions = [v for v, _ in weights]
    return rng.choices(versions, weights=[w for _, w in weights])[0]


def _shadows(
    spec: ModelSpec,
    policy: Policy | None,
    served: str,
    routing_key: str,
    rng: random.Random,
    specs: Mapping[str, ModelSpec],
) -> tuple[str, ...]:
    """The shadow arm labels that also run for this request.

    None if the shadow is the served arm (`served`, a label) or is not ready. `percent` is
    decided by the key's hash when there is a key (a key is always or never
    shadowed, so its series has complete pairs; raising the percent only
    adds keys), else by a random draw.
    """
    shadow = policy.shadow if policy else None
    if shadow is None or shadow.version == served or not arm_ready(spec, shadow.version, specs):
        return ()
    if shadow.percent < 100:
        if routing_key:
            draw = _unit(_HASH_DOMAIN_SHADOW, spec.name, shadow.version, routing_key)
        else:
            draw = rng.random()
        if draw * 100 >= shadow.percent:
            return ()
    return (shadow.version,)
