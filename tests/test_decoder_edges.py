"""Decoder edge cases beyond the golden vectors, and a property: decode never raises."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.model import DeadLetter, Decoded, RawMessage
from hub.profiles.profile_set import UNROUTED, ProfileSet

PROFILES = ProfileSet.load(Path(__file__).resolve().parent.parent / "device_profiles")
NOW = 1_795_539_605_000


def _decode(topic: str, payload: bytes) -> Decoded | DeadLetter:
    return PROFILES.decode(RawMessage(topic, payload, NOW))


def _lamp(ts: str = "1795539600", e: str = "1") -> bytes:
    """A lamp state whose time and energy are given as JSON text."""
    return (
        f'{{"ts": {ts}, "on": true, "dim": 1, "p": 1, "v": 1, "i": 1, "pf": 1, "e": {e}, "hrs": 1}}'
    ).encode()


def test_tag_that_cannot_be_stored_is_dead_lettered() -> None:
    for bad in ("PO-TC-1\\\\", "PO-TC-1\\n2"):
        payload = (
            '{"start": "2026-11-24T17:00:00Z", "period_s": 300, "lanes": [{"lane": 1, "dir": "'
            + bad
            + '", "counts": {}, "speed_avg_kmh": 1, "speed_p85_kmh": 1, "occupancy_pct": 1}]}'
        )
        result = _decode("traffic/PO-TC-1/interval", payload.encode())
        assert isinstance(result, DeadLetter)
        assert (result.reason, result.profile) == ("bad_value", "traffic_counter")


def test_deeply_nested_json_is_dead_lettered() -> None:
    payload = b"[" * 100_000 + b"]" * 100_000
    result = _decode("traffic/X/health", payload)
    assert isinstance(result, DeadLetter)
    assert result.reason in ("invalid_json", "too_large")
    deep = b'{"a":' * 2000 + b"1" + b"}" * 2000
    result = _decode("traffic/X/health", deep)
    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_json"


def test_topic_no_profile_knows_is_unrouted() -> None:
    result = _decode("somewhere/else", b"{}")
    assert isinstance(result, DeadLetter)
    assert (result.profile, result.reason) == (UNROUTED, "bad_topic")


def test_huge_integer_is_bad_value() -> None:
    result = _decode("citelum/prato/Q/lamp/L/state", _lamp(e="99999999999999999999999"))
    assert isinstance(result, DeadLetter)
    assert result.reason == "bad_value"


TOPICS = [
    "application/1/device/70b3d57ed0051a2f/event/up",
    "citelum/prato/Q/lamp/L/state",
    "citelum/prato/Q/cabinet/state",
    "citelum/prato/Q/status",
    "traffic/S/interval",
    "traffic/S/csv",
    "traffic/S/health",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=300))
def test_random_bytes_never_raise(topic: str, payload: bytes) -> None:
    assert isinstance(_decode(topic, payload), Decoded | DeadLetter)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(TOPICS),
    document=st.dictionaries(
        st.sampled_from(
            [
                "ts",
                "on",
                "p",
                "lanes",
                "phases",
                "start",
                "time",
                "fPort",
                "data",
                "rxInfo",
                "deviceInfo",
                "faults",
                "counts",
                "supply_v",
                "door",
                "mode",
                "period_s",
            ]
        ),
        json_values,
    ),
)
def test_random_json_documents_never_raise(topic: str, document: dict[str, object]) -> None:
    result = _decode(topic, json.dumps(document).encode())
    assert isinstance(result, Decoded | DeadLetter)


@settings(max_examples=500, deadline=None)
@given(topic=st.text(max_size=120))
def test_topic_routing_never_raises_on_any_topic(topic: str) -> None:
    result = _decode(topic, b"{}")
    assert isinstance(result, Decoded | DeadLetter)


def test_an_epoch_too_large_for_milliseconds_is_an_unparsable_time() -> None:
    # 1.8e305 s is a finite float, but in milliseconds it overflows to infinity
    result = _decode("citelum/prato/Q/lamp/L/state", _lamp(ts="1.797693134862316e+305"))
    assert isinstance(result, Decoded)
    assert result.time_problem is not None
    assert result.time_problem.kind == "unparsable"
    assert [p.time_ms for p in result.points] == [NOW]
