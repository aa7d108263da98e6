"""Line protocol encoding: escaping round-trips any tag or string value."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hub.model import Point
from hub.storage import lineprotocol


def test_contract_example_encoding() -> None:
    point = Point(
        "parking_bay",
        {"device_id": "PO-PB-00412", "zone": "centro-storico"},
        {"occupied": True, "battery_v": 3.73, "rssi_dbm": -97, "faults": "A,B"},
        1795508102181,
    )
    assert lineprotocol.encode(point) == (
        "parking_bay,device_id=PO-PB-00412,zone=centro-storico "
        'occupied=true,battery_v=3.73,rssi_dbm=-97i,faults="A,B" 1795508102181'
    )


def test_special_characters_are_escaped() -> None:
    point = Point("m", {"device_id": 'a b,c=d"e\\'}, {"s": 'say "hi" \\ bye'}, 1)
    line = lineprotocol.encode(point)
    assert line == 'm,device_id=a\\ b\\,c\\=d"e\\ s="say \\"hi\\" \\\\ bye" 1'


tag_text = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\n\r"),
    min_size=1,
).filter(lambda s: not s.endswith("\\"))


@given(tag=tag_text, text=st.text(alphabet=st.characters(codec="utf-8")))
def test_round_trip(tag: str, text: str) -> None:
    point = Point("m", {"device_id": tag}, {"s": text, "n": 1.5, "i": -3, "b": False}, 42)
    parsed = lineprotocol.parse(lineprotocol.encode(point))
    assert parsed.tags == {"device_id": tag}
    assert parsed.fields == {"s": text, "n": 1.5, "i": -3, "b": False}
    assert parsed.time_ms == 42
