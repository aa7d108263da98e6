"""The sharing policy (``hub.sharing``): validation with clear errors, and what each
organisation is granted; and the live feed's ring, replay and zone counts (``hub.live``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ConfigError
from hub.live import LiveFeed, ZoneChanges
from hub.sharing import FULL, Grant, Policy, access_for

SCHEMA = {
    "lighting_lamp": ["on", "power_w", "energy_wh", "faults", "fault_count"],
    "parking_bay": ["occupied", "battery_v"],
}
BASE: dict[str, Any] = {
    "organisations": ["comune", "citelum", "gida"],
    "unowned": ["comune"],
    "shares": [
        {
            "owner": "citelum",
            "with": ["*"],
            "data": {"lighting_lamp": ["energy_wh", "faults"]},
            "aggregate": ["cabinet_id", "zone"],
            "alerts": ["lamp_failure"],
            "interventions": True,
        },
        {
            "owner": "citelum",
            "with": ["comune"],
            "data": {"lighting_lamp": "*"},
            "delay": "15m",
            "alerts": True,
        },
    ],
}


def policy(**changes: Any) -> Policy:
    return Policy.parse({**BASE, **changes}, "sharing.yaml", SCHEMA)


def test_owners_see_their_own_data_in_full() -> None:
    access = policy().access("citelum")
    assert access.grant("citelum", "lighting_lamp", "power_w") == FULL
    assert access.sees_alert("citelum", "anything")
    assert access.sees_interventions("citelum")
    assert access.lists_device("citelum", ["lighting_lamp"])


def test_a_share_grants_only_its_fields_groupings_and_delay() -> None:
    gida = policy().access("gida")
    assert gida.grant("citelum", "lighting_lamp", "energy_wh") == Grant(
        frozenset({"cabinet_id", "zone"}), 0
    )
    assert gida.grant("citelum", "lighting_lamp", "power_w") is None
    assert gida.grant("citelum", "parking_bay", "occupied") is None
    grant = gida.grant("citelum", "lighting_lamp", "faults")
    assert grant is not None
    assert grant.allows(["zone"])
    assert grant.allows([])  # the whole city
    assert not grant.allows(["device_id"])
    assert not grant.allows(None)  # per device
    assert not gida.lists_device("citelum", ["lighting_lamp"])  # aggregate only

    comune = policy().access("comune")
    # per device (an hour... a quarter late) beats per cabinet on time
    assert comune.grant("citelum", "lighting_lamp", "power_w") == Grant(None, 15 * 60_000)
    assert comune.grant("citelum", "lighting_lamp", "faults") == Grant(None, 15 * 60_000)
    assert comune.lists_device("citelum", ["lighting_lamp"])


def test_grant_all_is_the_weakest_over_the_fields() -> None:
    comune = policy().access("comune")
    both = comune.grant_all("citelum", "lighting_lamp", ["power_w", "energy_wh"])
    assert both == Grant(None, 15 * 60_000)
    gida = policy().access("gida")
    assert gida.grant_all("citelum", "lighting_lamp", ["energy_wh", "power_w"]) is None
    assert gida.grant_all("citelum", "lighting_lamp", ["energy_wh", "faults"]) == Grant(
        frozenset({"cabinet_id", "zone"}), 0
    )


def test_alerts_interventions_and_unowned_devices() -> None:
    gida, comune, citelum = (policy().access(o) for o in ("gida", "comune", "citelum"))
    assert gida.sees_alert("citelum", "lamp_failure")
    assert not gida.sees_alert("citelum", "lamp_silent")
    assert comune.sees_alert("citelum", "lamp_silent")  # alerts: true
    assert not citelum.sees_alert("comune", "silent")
    assert gida.sees_interventions("citelum")
    assert not citelum.sees_interventions("gida")
    # devices without an owner: the organisations under "unowned"
    assert comune.owns(None)
    assert comune.owns("")
    assert not gida.owns(None)
    assert gida.grant(None, "parking_bay", "occupied") is None


def test_without_a_policy_everything_is_visible() -> None:
    access = access_for(None, "anyone")
    assert access.unrestricted
    assert access.grant("citelum", "lighting_lamp", "power_w") == FULL
    assert access.sees_alert("x", "y")
    assert access.lists_device(None, [])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"organisations": []}, "organisations: List should have at least 1 item"),
        ({"unowned": ["nobody"]}, "unowned: unknown organisation 'nobody'"),
        (
            {"shares": [{"owner": "acme", "with": ["*"]}]},
            "shares.0.owner: unknown organisation 'acme'",
        ),
        (
            {"shares": [{"owner": "gida", "with": ["cispel"]}]},
            "shares.0.with: unknown organisation 'cispel'",
        ),
        (
            {"shares": [{"owner": "gida", "with": ["*"], "data": {"water": "*"}}]},
            "shares.0.data: unknown measurement 'water'",
        ),
        (
            {"shares": [{"owner": "gida", "with": ["*"], "data": {"parking_bay": ["speed"]}}]},
            "shares.0.data.parking_bay: unknown field 'speed'",
        ),
        (
            {"shares": [{"owner": "gida", "with": ["*"], "delay": "soon"}]},
            "delay 'soon' must be a whole number",
        ),
        ({"shares": [{"owner": "gida", "with": ["*"], "extra": 1}]}, "shares.0.extra"),
        ({"shares": [{"owner": "gida", "with": []}]}, "shares.0.with"),
    ],
)
def test_policy_errors_name_the_file_and_the_entry(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy(**changes)
    assert str(caught.value).startswith("sharing.yaml: ")
    assert message in str(caught.value)


def test_keys_and_owners_must_be_listed_organisations(tmp_path: Path) -> None:
    path = tmp_path / "sharing.yaml"
    path.write_text("organisations: [comune]\nshares: []\n")
    loaded = Policy.load(path, SCHEMA)
    loaded.check_members("keys", {"comune"})
    with pytest.raises(ConfigError, match="organisation 'citelum' is not listed"):
        loaded.check_members("devices.csv (owner)", {"comune", "citelum"})
    with pytest.raises(ConfigError, match="is not listed"):
        loaded.access("citelum")
    path.write_text("organisations: [comune\n")
    with pytest.raises(ConfigError, match="cannot read the sharing policy"):
        Policy.load(path, SCHEMA)


# --- the live feed ---------------------------------------------------------------------------


def test_replay_gives_the_events_after_an_id_and_says_when_some_are_gone() -> None:
    feed = LiveFeed(replay_size=3, epoch=7)
    ids = [feed.publish("alert", {"n": n}).id for n in range(5)]
    assert ids == ["7-1", "7-2", "7-3", "7-4", "7-5"]
    fresh = feed.replay(None)
    assert (fresh.events, fresh.reset, fresh.last_seq) == ([], False, 5)
    held = feed.replay("7-3")
    assert [e.id for e in held.events] == ["7-4", "7-5"]
    assert not held.reset
    # 7-2 and 7-3 left the ring of three: a client that saw only 7-1 lost them
    lost = feed.replay("7-1")
    assert lost.reset
    assert [e.id for e in lost.events] == ["7-3", "7-4", "7-5"]
    assert feed.replay("7-5").events == []
    assert feed.replay("6-2").reset  # another process's id
    assert feed.replay("garbage").reset
    assert feed.replay("7-9").reset  # ahead of this process: not one of its ids


def test_waiters_are_woken_from_other_threads() -> None:
    feed = LiveFeed()

    async def wait_for_one() -> list[str]:
        waiter = feed.waiter()
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, lambda: loop.run_in_executor(None, feed.publish, "zone", {}))
        await asyncio.wait_for(waiter.event.wait(), timeout=5)
        feed.release(waiter)
        return [e.kind for e in feed.after(0)]

    assert asyncio.run(wait_for_one()) == ["zone"]


def test_zone_changes_fold_many_changes_into_one_event_per_zone() -> None:
    feed = LiveFeed()
    now = [100.0]
    changes = ZoneChanges(feed, "parking_occupied", lambda owner: lambda _: True, lambda: now[0])
    for n in range(50):
        changes.set("comune", "centro", f"bay-{n}", n % 2 == 0)
    changes.set("comune", "stazione", "bay-x", True)
    assert changes.flush() == 2
    events = [e.data for e in feed.after(0)]
    assert events == [
        {
            "zone": "centro",
            "owner": "comune",
            "measure": "parking_occupied",
            "count": 25,
            "total": 50,
        },
        {
            "zone": "stazione",
            "owner": "comune",
            "measure": "parking_occupied",
            "count": 1,
            "total": 1,
        },
    ]
    # within the second: held back, then sent with the newest numbers
    changes.set("comune", "centro", "bay-1", True)
    changes.set("comune", "centro", "bay-3", True)
    assert changes.flush() == 0
    now[0] += 1.0
    assert changes.flush() == 1
    assert feed.after(2)[0].data["count"] == 27
    # a value that did not change is no change
    changes.set("comune", "centro", "bay-3", True)
    now[0] += 5
    assert changes.flush() == 0
    # a bay that moves zone leaves the old one
    changes.set("comune", "stazione", "bay-3", True)
    assert changes.flush() == 2
    counts = {e.data["zone"]: e.data["count"] for e in feed.after(3)}
    assert counts == {"centro": 26, "stazione": 2}


def test_the_example_policy_is_valid_for_the_built_in_profiles_and_the_simulated_fleet() -> None:
    from hub.profiles.profile_set import ProfileSet  # noqa: PLC0415
    from hub.simulate.fleet import Fleet, FleetSpec  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    schema = ProfileSet.load(root / "device_profiles").schema()
    example = Policy.load(
        root / "sharing.example.yaml", {n: list(m.fields) for n, m in schema.items()}
    )
    fleet = Fleet(FleetSpec(parking_bays=20, cabinets=2, lamps_per_cabinet=3, traffic_sites=10))
    example.check_members("simulated inventory", {row.owner for row in fleet.devices()})
    gida = example.access("gida")
    assert gida.grant("citelum", "lighting_lamp", "power_w") is None
    assert gida.grant("citelum", "lighting_lamp", "energy_wh") is not None
