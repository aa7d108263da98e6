"""``hub broker sharing-acl``: the consumer accounts' ACL rules computed from the sharing policy.

The policies here are parsed against the real device profiles (``device_profiles/``), so the
topic shapes and the fields of each measurement are the ones the hub decodes.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hub import broker_admin, cli
from hub.broker_admin import ROLES
from hub.errors import ConfigError
from hub.inventory import Device, Inventory
from hub.profiles.profile_set import ProfileSet
from hub.sharing import Policy
from hub.sharing_acl import (
    MARKER,
    ConsumerBlock,
    consumer_blocks,
    create_accounts,
    render,
    write_blocks,
)
from tests.conftest import ROOT

PROFILES = ProfileSet.load(ROOT / "device_profiles")
MEASUREMENTS = {name: list(m.fields) for name, m in PROFILES.schema().items()}
ORGS = ("citelum", "comune", "gida")
PARKING_SHAPE = "application/+/device/+/event/up"
LAMP_FIELDS = sorted(MEASUREMENTS["lighting_lamp"])
CITELUM_ALL: dict[str, Any] = {
    "lighting_lamp": "*",
    "lighting_cabinet": "*",
    "lighting_phase": "*",
    "device_status": "*",
}

# (device id, profile, owner)
FLEET: tuple[tuple[str, str, str], ...] = (
    ("PO-QE-118", "citelum_lighting", "citelum"),
    ("PO-LP-118-07", "citelum_lighting", "citelum"),
    ("PO-TC-017", "traffic_counter", "comune"),
    ("PO-TC-018", "traffic_counter", "gida"),
    ("PO-TC-019", "traffic_counter", ""),
    ("PK-001", "parking_bay", "comune"),
    ("PK-002", "parking_bay", "comune"),
)


def policy(
    shares: Sequence[dict[str, Any]] = (),
    unowned: Sequence[str] = ("comune",),
    organisations: Sequence[str] = ORGS,
) -> Policy:
    body = {"organisations": list(organisations), "unowned": list(unowned), "shares": shares}
    return Policy.parse(body, "sharing.yaml", MEASUREMENTS)


def inventory(rows: Sequence[tuple[str, str, str]] = FLEET) -> Inventory:
    return Inventory([Device(device_id=d, profile=p, zone="centro", owner=o) for d, p, o in rows])


def blocks(
    shares: Sequence[dict[str, Any]] = (),
    rows: Sequence[tuple[str, str, str]] = FLEET,
    **options: Any,
) -> dict[str, ConsumerBlock]:
    made = consumer_blocks(policy(shares, **options), inventory(rows), PROFILES)
    return {block.org: block for block in made}


def device_topics(block: ConsumerBlock, device_id: str) -> set[str]:
    """The read topics naming ``device_id`` as a level, alert topics left out."""
    return {
        topic
        for topic in block.topics()
        if device_id in topic.split("/") and not topic.startswith("hub/alerts/")
    }


TRAFFIC_017 = {"traffic/PO-TC-017/interval", "traffic/PO-TC-017/csv", "traffic/PO-TC-017/health"}


# ---------------------------------------------------------------------------------------
# Device topics
# ---------------------------------------------------------------------------------------


def test_own_devices_get_each_topic_of_their_profile_with_their_id_as_the_device_level() -> None:
    found = blocks()
    assert found["citelum"].account == "citelum-consumer"
    assert device_topics(found["citelum"], "PO-LP-118-07") == {
        "citelum/prato/+/lamp/PO-LP-118-07/state",  # the cabinet level is any
        "citelum/prato/PO-LP-118-07/cabinet/state",
        "citelum/prato/PO-LP-118-07/status",
    }
    assert device_topics(found["citelum"], "PO-QE-118") == {
        "citelum/prato/+/lamp/PO-QE-118/state",
        "citelum/prato/PO-QE-118/cabinet/state",
        "citelum/prato/PO-QE-118/status",
    }
    assert device_topics(found["comune"], "PO-TC-017") == TRAFFIC_017
    # nothing shared: nothing of the others' devices, and no whole shapes
    gida = found["gida"].topics()
    assert {t for t in gida if not t.startswith(("hub/alerts/", "situation/"))} == {
        "traffic/PO-TC-018/interval",
        "traffic/PO-TC-018/csv",
        "traffic/PO-TC-018/health",
    }
    assert all("+" not in t.split("/")[-2:] for t in gida if t.startswith("traffic/"))


def test_a_share_of_some_fields_grants_no_topic() -> None:
    share = {"owner": "comune", "with": ["gida"], "data": {"traffic_lane": ["vehicles", "car"]}}
    gida = blocks([share])["gida"]
    assert device_topics(gida, "PO-TC-017") == set()
    assert any(c.startswith("comune: 3 of 3 device topics not granted") for c in gida.comments)


def test_a_topic_is_granted_when_every_field_of_each_measurement_it_carries_is_shared() -> None:
    # interval and csv carry traffic_lane only; health carries traffic_health
    lanes = {"owner": "comune", "with": ["gida"], "data": {"traffic_lane": "*"}}
    assert device_topics(blocks([lanes])["gida"], "PO-TC-017") == {
        "traffic/PO-TC-017/interval",
        "traffic/PO-TC-017/csv",
    }
    # the cabinet message stores lighting_cabinet AND lighting_phase: both are needed
    cabinet = {"owner": "citelum", "with": ["gida"], "data": {"lighting_cabinet": "*"}}
    assert "citelum/prato/PO-QE-118/cabinet/state" not in blocks([cabinet])["gida"].topics()
    both = {**cabinet, "data": {"lighting_cabinet": "*", "lighting_phase": "*"}}
    assert device_topics(blocks([both])["gida"], "PO-QE-118") == {
        "citelum/prato/PO-QE-118/cabinet/state"
    }


def test_fields_of_two_per_device_shares_add_up() -> None:
    half = len(LAMP_FIELDS) // 2
    shares = [
        {"owner": "citelum", "with": ["gida"], "data": {"lighting_lamp": LAMP_FIELDS[:half]}},
        {"owner": "citelum", "with": ["*"], "data": {"lighting_lamp": LAMP_FIELDS[half:]}},
    ]
    assert "citelum/prato/+/lamp/PO-LP-118-07/state" in blocks(shares)["gida"].topics()
    assert "citelum/prato/+/lamp/PO-LP-118-07/state" not in blocks(shares[:1])["gida"].topics()


def test_an_aggregated_share_grants_no_device_topic() -> None:
    share = {
        "owner": "citelum",
        "with": ["*"],
        "data": CITELUM_ALL,
        "aggregate": ["cabinet_id", "zone"],
    }
    found = blocks([share])
    for org in ("comune", "gida"):
        assert device_topics(found[org], "PO-LP-118-07") == set(), org
        assert device_topics(found[org], "PO-QE-118") == set(), org


def test_a_delayed_share_grants_nothing_live_unless_another_share_is_live() -> None:
    delayed = {"owner": "citelum", "with": ["comune"], "data": CITELUM_ALL, "delay": "15m"}
    comune = blocks([delayed])["comune"]
    assert not {t for t in comune.topics() if t.startswith("citelum/")}
    live = {"owner": "citelum", "with": ["comune"], "data": CITELUM_ALL, "delay": "0s"}
    comune = blocks([delayed, live])["comune"]
    assert device_topics(comune, "PO-QE-118") == {
        "citelum/prato/+/lamp/PO-QE-118/state",
        "citelum/prato/PO-QE-118/cabinet/state",
        "citelum/prato/PO-QE-118/status",
    }


def test_unowned_devices_follow_the_policys_unowned_list() -> None:
    found = blocks()
    assert device_topics(found["comune"], "PO-TC-019") == {
        "traffic/PO-TC-019/interval",
        "traffic/PO-TC-019/csv",
        "traffic/PO-TC-019/health",
    }
    assert "hub/alerts/+/PO-TC-019" in found["comune"].topics()
    for org in ("citelum", "gida"):
        assert not any("PO-TC-019" in t for t in found[org].topics()), org
    nobody = blocks(unowned=[])
    assert not any("PO-TC-019" in t for b in nobody.values() for t in b.topics())
    # a share from an owner never covers devices without one
    everything = {"owner": "comune", "with": ["*"], "data": {"traffic_lane": "*"}}
    assert not any("PO-TC-019" in t for t in blocks([everything])["gida"].topics())


def test_device_ids_that_cannot_be_a_topic_level_are_left_out_with_a_comment() -> None:
    rows = (("PO+TC", "traffic_counter", "comune"), ("PO TC", "traffic_counter", "comune"))
    comune = blocks(rows=rows)["comune"]
    assert not [t for t in comune.topics() if t.startswith("traffic/")]
    assert any("PO+TC" in c and "cannot be one level" in c for c in comune.comments)


# ---------------------------------------------------------------------------------------
# The parking shape: the device id is not a topic level
# ---------------------------------------------------------------------------------------


def test_parking_shape_is_granted_whole_to_who_sees_every_bay_and_the_unregistered() -> None:
    found = blocks()
    assert PARKING_SHAPE in found["comune"].topics()
    # never per device: the dev_eui level is not the device id
    assert [t for t in found["comune"].topics() if t.startswith("application/")] == [PARKING_SHAPE]
    for org in ("citelum", "gida"):
        assert not [t for t in found[org].topics() if t.startswith("application/")], org
        assert any(c.startswith(f"not granted: {PARKING_SHAPE}") for c in found[org].comments)


def test_parking_shape_is_not_granted_when_one_bay_is_hidden() -> None:
    rows = (*FLEET, ("PK-003", "parking_bay", "gida"))
    comune = blocks(rows=rows)["comune"]
    assert PARKING_SHAPE not in comune.topics()
    (comment,) = [c for c in comune.comments if c.startswith("not granted: application")]
    assert "PK-003" in comment
    assert "PK-001" not in comment
    # gida shares its bay in full and live: the shape comes back
    share = {"owner": "gida", "with": ["comune"], "data": {"parking_bay": "*"}}
    assert PARKING_SHAPE in blocks([share], rows=rows)["comune"].topics()
    # ... but not when the share is delayed
    delayed = {**share, "delay": "1m"}
    assert PARKING_SHAPE not in blocks([delayed], rows=rows)["comune"].topics()


def test_parking_shape_needs_the_devices_missing_from_the_inventory_too() -> None:
    # citelum sees every bay of the inventory, but bays not in it are `unowned` (comune's)
    share = {"owner": "comune", "with": ["citelum"], "data": {"parking_bay": "*"}}
    citelum = blocks([share])["citelum"]
    assert PARKING_SHAPE not in citelum.topics()
    (comment,) = [c for c in citelum.comments if c.startswith("not granted: application")]
    assert "missing from the inventory" in comment
    assert "PK-001" not in comment
    assert PARKING_SHAPE in blocks([share], unowned=["comune", "citelum"])["citelum"].topics()


# ---------------------------------------------------------------------------------------
# Alerts and interventions
# ---------------------------------------------------------------------------------------


def alert_topics(block: ConsumerBlock) -> set[str]:
    return {t for t in block.topics() if t.startswith("hub/alerts/")}


def test_alert_topics_for_own_devices_and_shares_with_every_alert() -> None:
    every = {"owner": "citelum", "with": ["comune"], "alerts": True}
    some = {"owner": "citelum", "with": ["gida"], "alerts": ["lamp_failure", "gateway_offline"]}
    found = blocks([every, some])
    assert alert_topics(found["citelum"]) == {
        "hub/alerts/+/PO-LP-118-07",
        "hub/alerts/+/PO-QE-118",
    }
    assert alert_topics(found["comune"]) == {
        "hub/alerts/+/PO-LP-118-07",
        "hub/alerts/+/PO-QE-118",
        "hub/alerts/+/PO-TC-017",
        "hub/alerts/+/PO-TC-019",  # unowned
        "hub/alerts/+/PK-001",
        "hub/alerts/+/PK-002",
    }
    # a list of rules cannot be told apart on the topic: nothing, and why
    assert alert_topics(found["gida"]) == {"hub/alerts/+/PO-TC-018"}
    (comment,) = [c for c in found["gida"].comments if c.startswith("alerts of citelum")]
    assert "gateway_offline, lamp_failure" in comment
    # alerts alone grant no data topic
    assert device_topics(found["comune"], "PO-QE-118") == set()


def test_an_alert_topic_level_shared_by_two_devices_needs_both() -> None:
    # the hub writes "+", "#" and "/" of a device id as "_" in the alert topic
    rows = (("PO_TC", "traffic_counter", "comune"), ("PO/TC", "traffic_counter", "gida"))
    found = blocks(rows=rows)
    for org in ("comune", "gida"):
        assert alert_topics(found[org]) == set(), org
    assert any("alerts of PO_TC" in c for c in found["comune"].comments)
    share = {"owner": "gida", "with": ["comune"], "alerts": True}
    assert alert_topics(blocks([share], rows=rows)["comune"]) == {"hub/alerts/+/PO_TC"}


def test_another_alert_topic_template() -> None:
    made = consumer_blocks(
        policy(), inventory(), PROFILES, alert_topic="city/{device_id}/alarm/{severity}"
    )
    citelum = next(b for b in made if b.org == "citelum")
    assert {t for t in citelum.topics() if t.startswith("city/")} == {
        "city/PO-LP-118-07/alarm/+",
        "city/PO-QE-118/alarm/+",
    }
    without_device = consumer_blocks(policy(), inventory(), PROFILES, alert_topic="city/{severity}")
    assert not any(t.startswith("city/") for b in without_device for t in b.topics())
    with pytest.raises(ConfigError, match="whole topic level"):
        consumer_blocks(policy(), inventory(), PROFILES, alert_topic="city/dev-{device_id}")


def test_situation_topics_own_readwrite_and_read_where_interventions_are_shared() -> None:
    shares = [
        {"owner": "citelum", "with": ["comune"], "interventions": True},
        {"owner": "gida", "with": ["*"], "interventions": True},
        {"owner": "comune", "with": ["gida"], "interventions": False, "alerts": True},
    ]
    found = blocks(shares)
    situation = {
        org: {rule for rule in block.rules if "situation/" in rule} for org, block in found.items()
    }
    assert situation == {
        "comune": {
            "topic readwrite situation/comune/events",
            "topic read situation/citelum/events",
            "topic read situation/gida/events",
        },
        "citelum": {
            "topic readwrite situation/citelum/events",
            "topic read situation/gida/events",
        },
        "gida": {"topic readwrite situation/gida/events"},
    }
    # nothing else is writable
    for block in found.values():
        assert block.topics("readwrite") == {f"situation/{block.org}/events"}
        assert {rule.split()[1] for rule in block.rules} == {"read", "readwrite"}


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

SHARES: list[dict[str, Any]] = [
    {"owner": "citelum", "with": ["comune"], "data": CITELUM_ALL, "alerts": True},
    {"owner": "comune", "with": ["gida"], "data": {"traffic_lane": "*"}, "interventions": True},
    {"owner": "citelum", "with": ["*"], "data": {"lighting_lamp": "*"}, "aggregate": ["zone"]},
]


def test_output_is_sorted_and_does_not_depend_on_input_order() -> None:
    first = render(consumer_blocks(policy(SHARES), inventory(), PROFILES), "sharing.yaml")
    shuffled_rows = list(FLEET)
    random.Random(7).shuffle(shuffled_rows)
    again = consumer_blocks(
        policy(list(reversed(SHARES)), organisations=list(reversed(ORGS))),
        inventory(shuffled_rows),
        PROFILES,
    )
    assert render(again, "sharing.yaml") == first
    assert [b.org for b in again] == sorted(ORGS)
    assert first.startswith("# Consumer accounts of the organisations of the sharing policy ")
    for block in again:
        assert block.comments[0] == f"{block.account}: {MARKER}"
        assert "sharing.yaml" in block.comments[1]
        # device topics, then alert topics, then situation topics, each sorted
        sections = [2 if "situation/" in r else 1 if "hub/alerts/" in r else 0 for r in block.rules]
        assert sections == sorted(sections)
        for section in (0, 1):
            rules = [r for r, s in zip(block.rules, sections, strict=True) if s == section]
            assert rules == sorted(rules)
        assert all(len(line) <= 100 for line in block.lines() if line.startswith("#"))


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

CSV_HEADER = "device_id,profile,zone,lat,lon,owner,installed_at\n"


def _files(tmp_path: Path, policy_text: str, csv_rows: str) -> list[str]:
    (tmp_path / "sharing.yaml").write_text(policy_text)
    (tmp_path / "devices.csv").write_text(CSV_HEADER + csv_rows)
    return [
        "broker",
        "sharing-acl",
        "--policy",
        str(tmp_path / "sharing.yaml"),
        "--inventory",
        str(tmp_path / "devices.csv"),
        "--profiles-dir",
        str(ROOT / "device_profiles"),
    ]


GOOD_POLICY = (
    "organisations: [comune, citelum, gida]\n"
    "unowned: [comune]\n"
    "shares:\n"
    "  - {owner: citelum, with: [comune], data: {lighting_lamp: '*'}, alerts: true}\n"
)
GOOD_ROWS = "PO-TC-017,traffic_counter,nord,43.8,11.1,comune,2025-01-01\n"


@pytest.mark.parametrize(
    ("policy_text", "rows", "message"),
    [
        ("organisations: [comune]\nshares: [{owner: x}]\n", GOOD_ROWS, r"sharing\.yaml: shares"),
        (
            "organisations: [comune]\nshares:\n  - {owner: comune, with: ['*'], "
            "data: {traffic_lane: [no_such_field]}}\n",
            GOOD_ROWS,
            r"sharing\.yaml: shares\.0\.data\.traffic_lane: unknown field 'no_such_field'",
        ),
        (
            GOOD_POLICY,
            "PO-TC-017,traffic_counter,nord,43.8,11.1,acme,2025-01-01\n",
            r"devices\.csv: device PO-TC-017: owner: organisation 'acme' is not listed",
        ),
        (
            GOOD_POLICY,
            "PO-TC-017,radar_v9,nord,43.8,11.1,comune,2025-01-01\n",
            r"devices\.csv: device PO-TC-017: profile 'radar_v9' is not a loaded profile",
        ),
        (
            "organisations: [comune, _lab]\n",
            GOOD_ROWS,
            r"organisation '_lab': no consumer account possible",
        ),
    ],
    ids=["bad-policy", "unknown-field", "unlisted-owner", "unknown-profile", "bad-account"],
)
def test_bad_inputs_are_configuration_errors_naming_file_and_reason(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    policy_text: str,
    rows: str,
    message: str,
) -> None:
    args = _files(tmp_path, policy_text, rows)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert re.search(message, err), err


def test_missing_policy_or_inventory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _files(tmp_path, GOOD_POLICY, GOOD_ROWS)
    (tmp_path / "sharing.yaml").unlink()
    assert cli.main(args) == 2
    assert "sharing.yaml: sharing policy file does not exist" in capsys.readouterr().err
    args = _files(tmp_path, GOOD_POLICY, GOOD_ROWS)
    (tmp_path / "devices.csv").unlink()
    assert cli.main(args) == 2
    assert "devices.csv: inventory file does not exist" in capsys.readouterr().err
    # no --policy and no HUB_SHARING_FILE
    monkeypatch.delenv("HUB_SHARING_FILE", raising=False)
    assert cli.main(["broker", "sharing-acl"]) == 2
    assert "--policy FILE or set HUB_SHARING_FILE" in capsys.readouterr().err


def test_create_accounts_needs_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _files(tmp_path, GOOD_POLICY, GOOD_ROWS)
    acl = tmp_path / "acl"
    assert cli.main([*args, "--create-accounts", "--acl-file", str(acl)]) == 2
    assert "--create-accounts needs --write" in capsys.readouterr().err
    assert not acl.exists()


# ---------------------------------------------------------------------------------------
# Writing the ACL file
# ---------------------------------------------------------------------------------------

HAND_MADE = ["# an operator", "user ops", "topic read hub/deadletter/#"]
NOT_OURS = ["# made by hand", "user lab-consumer", "topic read traffic/+/interval"]
STALE = [
    f"# oldorg-consumer: {MARKER}",
    "# read-only consumer of organisation oldorg",
    "user oldorg-consumer",
    "topic readwrite situation/oldorg/events",
]


def _block_lines(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    found = broker_admin._find_blocks(lines, Path("acl"))[name]
    return lines[found.start : found.end]


def _starting_acl(path: Path) -> None:
    """The repo's ACL, comune-consumer as `add-account --role consumer` writes it, and more."""
    consumer = ROLES["consumer"]
    lines = (ROOT / "mosquitto" / "acl").read_text().splitlines()
    lines += ["", f"# {consumer.description}", "user comune-consumer"]
    lines += list(consumer.rules_for("comune-consumer"))
    lines += ["", *HAND_MADE, "", *STALE, "", *NOT_OURS]
    path.write_text("\n".join(lines) + "\n")


def test_write_replaces_only_the_consumer_blocks_and_is_idempotent(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    _starting_acl(acl)
    before = acl.read_text()
    made = consumer_blocks(policy(SHARES), inventory(), PROFILES)

    report = write_blocks(acl, made)
    assert report.replaced == ("comune-consumer",)
    assert report.added == ("citelum-consumer", "gida-consumer")
    assert report.removed == ("oldorg-consumer",)
    assert report.unchanged == ()
    after = acl.read_text()
    for block in made:
        assert _block_lines(after, block.account) == block.lines()
    # every other block exactly as it was
    for name in ("prato-hub", "situation-room", "chirpstack", "healthcheck", "ops"):
        assert _block_lines(after, name) == _block_lines(before, name), name
    assert _block_lines(after, "lab-consumer") == NOT_OURS  # no marker: not ours
    assert "oldorg" not in after
    # comune's block kept its place (before the hand-made one); new ones at the end
    order = [line.split()[1] for line in after.splitlines() if line.startswith("user ")]
    assert order == [
        "prato-hub",
        "situation-room",
        "chirpstack",
        "healthcheck",
        "comune-consumer",
        "ops",
        "lab-consumer",
        "citelum-consumer",
        "gida-consumer",
    ]
    assert after.startswith((ROOT / "mosquitto" / "acl").read_text())
    assert "\n\n\n" not in after

    again = write_blocks(acl, made)
    assert not again.changed
    assert again.unchanged == ("comune-consumer", "citelum-consumer", "gida-consumer")
    assert acl.read_text() == after

    # a new policy: the blocks follow it
    narrower = consumer_blocks(policy(SHARES[1:]), inventory(), PROFILES)
    assert write_blocks(acl, narrower).replaced == ("comune-consumer",)
    comune = _block_lines(acl.read_text(), "comune-consumer")
    assert not [line for line in comune if "citelum/prato" in line]


def test_cli_prints_by_default_and_writes_with_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _files(tmp_path, GOOD_POLICY, GOOD_ROWS)
    acl = tmp_path / "acl"
    assert cli.main([*args, "--acl-file", str(acl)]) == 0
    printed = capsys.readouterr().out
    assert not acl.exists()
    assert printed.splitlines()[0].endswith(f"sharing policy {tmp_path / 'sharing.yaml'},")
    assert "user comune-consumer\n" in printed
    assert "topic read traffic/PO-TC-017/interval\n" in printed

    assert cli.main([*args, "--write", "--acl-file", str(acl)]) == 0
    written = acl.read_text()
    assert "comune-consumer: block added" in capsys.readouterr().err
    # the file holds the printed blocks, without the printout's header
    assert written == "\n".join(printed.splitlines()[4:]) + "\n"
    assert cli.main([*args, "--write", "--acl-file", str(acl)]) == 0
    assert "comune-consumer: block unchanged" in capsys.readouterr().err
    assert acl.read_text() == written


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_accounts_made_by_add_account_keep_their_password_and_get_the_policys_rules(
    tmp_path: Path,
) -> None:
    acl, passwd = tmp_path / "acl", tmp_path / "passwd"
    first = broker_admin.add_account(
        "comune-consumer", ROLES["consumer"], password_file=passwd, acl_file=acl
    )
    comune_hash = next(
        line for line in passwd.read_text().splitlines() if line.startswith("comune-consumer:")
    )
    made = consumer_blocks(policy(SHARES), inventory(), PROFILES)
    write_blocks(acl, made)
    created = create_accounts(made, password_file=passwd, acl_file=acl)
    assert sorted(r.name for r in created) == ["citelum-consumer", "gida-consumer"]
    assert all(not r.acl_added for r in created)  # the blocks were there, with these rules
    assert first.password not in {r.password for r in created}
    entries = passwd.read_text().splitlines()
    assert comune_hash in entries  # not rotated
    assert sorted(line.split(":")[0] for line in entries) == [
        "citelum-consumer",
        "comune-consumer",
        "gida-consumer",
    ]
    assert _block_lines(acl.read_text(), "comune-consumer") == made[1].lines()
    # a second run creates nothing and changes nothing
    text = acl.read_text()
    assert create_accounts(made, password_file=passwd, acl_file=acl) == []
    assert acl.read_text() == text
    # add-account refuses to turn it back into an all-seeing consumer
    with pytest.raises(ConfigError, match="hub broker remove comune-consumer"):
        broker_admin.add_account(
            "comune-consumer", ROLES["consumer"], password_file=passwd, acl_file=acl
        )
