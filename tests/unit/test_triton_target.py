"""`triton_url` forms: one Triton, a list of replicas, a target gRPC resolves itself."""

from __future__ import annotations

import json

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forecast_gateway.errors import ConfigError
from forecast_gateway.triton_target import parse_target


def test_a_single_address_is_dialled_as_given_without_balancing() -> None:
    for url in ("127.0.0.1:8001", "triton:8001", "localhost:8001", "[::1]:8001"):
        target = parse_target(url)
        assert (target.grpc_target, target.replicas, target.balanced) == (url, (url,), False)
        assert target.channel_options() == []


def test_a_list_becomes_an_ipv4_target_balanced_round_robin() -> None:
    target = parse_target("127.0.0.1:8001, localhost:8002")
    assert target.grpc_target == "ipv4:127.0.0.1:8001,127.0.0.1:8002"
    assert target.replicas == ("127.0.0.1:8001", "127.0.0.1:8002")
    options = dict(target.channel_options())
    assert json.loads(str(options["grpc.service_config"])) == {
        "loadBalancingConfig": [{"round_robin": {}}]
    }


def test_a_list_of_ipv6_addresses_becomes_an_ipv6_target() -> None:
    target = parse_target("[::1]:8001,[0:0::1]:8002")
    assert target.grpc_target == "ipv6:[::1]:8001,[::1]:8002"
    assert target.balanced


@pytest.mark.parametrize(
    "url",
    [
        "dns:///triton-headless.forecast.svc.cluster.local:8001",
        "dns:triton:8001",
        "ipv4:10.0.0.1:8001,10.0.0.2:8001",
        "unix:/run/triton.sock",
    ],
)
def test_a_target_with_a_scheme_passes_through_unchanged(url: str) -> None:
    target = parse_target(url)
    assert target.grpc_target == url and target.balanced


def test_replicas_are_known_for_ip_targets_but_not_for_names() -> None:
    assert parse_target("ipv4:10.0.0.1:8001,10.0.0.2:8001").replicas == (
        "10.0.0.1:8001",
        "10.0.0.2:8001",
    )
    assert parse_target("dns:///triton-headless:8001").replicas == ()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("triton-0:8001,triton-1:8001", "dns:///triton-0:8001"),
        ("127.0.0.1,127.0.0.2:8001", "not host:port"),
        ("127.0.0.1:0,127.0.0.2:8001", "not host:port"),
        ("127.0.0.1:8001,127.0.0.1:8001", "twice"),
        ("127.0.0.1:8001,[::1]:8002", "mixes IPv4 and IPv6"),
    ],
)
def test_lists_that_cannot_work_are_refused_with_the_form_to_use(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match="triton_url") as raised:
        parse_target(url)
    assert words in str(raised.value)


@given(st.lists(st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)), min_size=2, unique=True))
def test_every_ipv4_list_is_a_target_grpc_accepts(items: list[tuple[object, int]]) -> None:
    url = ",".join(f"{host}:{port}" for host, port in items)
    target = parse_target(url)
    assert target.grpc_target == f"ipv4:{url}"
    assert target.replicas == tuple(url.split(","))
    # gRPC parses the target and the service config when the channel is built.
    grpc.insecure_channel(target.grpc_target, options=target.channel_options()).close()
