"""The generated point functions (hub.profiles.codegen) against the closures they replace.

A reference decoder interprets every value through its compiled evaluator, as the decoder
did before: for the golden payloads of the built-in profiles, with values swapped for
anything JSON (or a CSV cell) can hold, both must give the same points or the same dead
letter, reason and detail alike.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.model import DeadLetter, Decoded, FieldValue, RawMessage
from hub.profiles.decoder import Ctx, _tag_text, compile_value
from hub.profiles.golden import case_files, load_case
from hub.profiles.profile_set import ProfileSet
from hub.profiles.schema import PointSpec

PROFILES_DIR = Path(__file__).resolve().parent.parent / "device_profiles"
# every value shape read from JSON, where the built-in profiles read some from binary frames
SYNTHETIC_DIR = Path(__file__).resolve().parent / "data" / "codegen_profiles"
GENERATED = {"built-in": ProfileSet.load(PROFILES_DIR), "synthetic": ProfileSet.load(SYNTHETIC_DIR)}
REFERENCE = {"built-in": ProfileSet.load(PROFILES_DIR), "synthetic": ProfileSet.load(SYNTHETIC_DIR)}
SHAPES = {
    "ts": 1795539600000,
    "meta": {"name": "S-1", "site": "north", "deep": {"value": 2.5}},
    "kind": "1",
    "raw": 16,
    "flags": 8,
    "mode": "a",
    "radios": [{"rssi": -70, "snr": 3}, {"rssi": -60}],
    "label": "x",
    "items": [{"name": "n1", "value": 1.5, "level": 2, "list": [4]}, {"name": "n2", "value": 3}],
    "a": 1,
    "b": 2.5,
    "answer": True,
    "things": [1, "two"],
}
BY_KEY = {
    **SHAPES,
    "items": {"k1": {"name": "n1", "value": 1}, "k2": {"name": "n2", "value": 2.5, "level": 7}},
}
# float32 readings a frame can carry but JSON cannot: infinities and NaN are bad values
FRAMES = [struct.pack("<fH", reading, 3).hex() for reading in (1.5, math.inf, -math.inf, math.nan)]
# (profile set, topic, payload, received ms)
CASES = (
    [
        ("built-in", case.raw().topic, case.raw().payload, case.raw().received_ms)
        for case in (load_case(path) for _, path in case_files(GENERATED["built-in"]))
    ]
    + [
        ("synthetic", "synthetic/S-1/up", orjson.dumps(document), 1795539605000)
        for document in (SHAPES, BY_KEY)
    ]
    + [
        ("synthetic", "synthetic/S-1/frame", orjson.dumps({"data": frame}), 1795539605000)
        for frame in FRAMES
    ]
)


def interpreted(spec: PointSpec, text: bool | None) -> Any:
    tags = [(n, compile_value(n, s, text)) for n, s in spec.tags.items()]
    fields = [(n, compile_value(n, s, text)) for n, s in spec.fields.items()]

    def values(c: Ctx, device_id: str) -> tuple[dict[str, str], dict[str, FieldValue]]:
        found_tags = {"device_id": device_id}
        for name, evaluate in tags:
            tag = evaluate(c)
            if tag is not None and tag != "":
                found_tags[name] = _tag_text(name, tag)
        found_fields: dict[str, FieldValue] = {}
        for name, evaluate in fields:
            value = evaluate(c)
            if value is not None:
                found_fields[name] = value
        return found_tags, found_fields

    return values


def _interpret_everything(reference: ProfileSet) -> None:
    specs = {
        (item.profile.profile, message.name): message
        for item in reference.profiles
        for message in item.profile.messages
    }
    for _, decoder in reference._patterns:  # the test swaps each decoder's point functions
        message = specs[(decoder.profile, decoder.name)]
        text = (
            None
            if message.format == "json"
            else bool(message.delimited and message.delimited.decimal_comma)
        )
        for maker, point in zip(decoder._points, message.points, strict=True):
            maker.values = interpreted(point, text)


for _reference in REFERENCE.values():
    _interpret_everything(_reference)


def _same(kind: str, topic: str, payload: bytes, received_ms: int) -> None:
    message = RawMessage(topic, payload, received_ms)
    got, expected = GENERATED[kind].decode(message), REFERENCE[kind].decode(message)
    assert _outcome(got) == _outcome(expected), (topic, payload)


EDGES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**70,
    1.5,
    -0.0,
]
EDGES += [1e300, 3.0, "", "12", "1,5", "on", "true", "x\ny", "end\\", "LAMP_FAILURE", [], {}]
json_values = st.sampled_from(EDGES) | st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=4,
)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value could be swapped."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _leaves(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _leaves(inner, (*path, index))
    return found


def _swap(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = value


def _outcome(result: Decoded | DeadLetter) -> object:
    if isinstance(result, DeadLetter):
        return ("dead", result.profile, result.reason, result.detail)
    return ("points", result.profile, result.device_id, result.points, result.time_problem)


@settings(max_examples=1_500, deadline=None)
@given(data=st.data())
def test_generated_values_decode_as_the_closures_do(data: st.DataObject) -> None:
    kind, topic, payload, received_ms = data.draw(st.sampled_from(CASES))
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict | list):
        places = _leaves(document)
        for _ in range(data.draw(st.integers(1, 4))):
            if places:
                _swap(document, data.draw(st.sampled_from(places)), data.draw(json_values))
                places = _leaves(document)
        payload = json.dumps(document).encode()
    elif b";" in payload:  # a CSV report: swap one cell
        lines = payload.decode().splitlines()
        row = data.draw(st.integers(0, len(lines) - 1))
        cells = lines[row].split(";")
        cells[data.draw(st.integers(0, len(cells) - 1))] = data.draw(
            st.sampled_from(["", "x", "1,5", "7", "-3", "1e400", "true", " 2 "])
        )
        lines[row] = ";".join(cells)
        payload = "\n".join(lines).encode()
    _same(kind, topic, payload, received_ms)


def test_every_sample_decodes_as_the_closures_do() -> None:
    for kind, topic, payload, received_ms in CASES:
        _same(kind, topic, payload, received_ms)
    for _, topic, payload, received_ms in CASES[-6:-3]:  # the synthetic shapes decode whole
        assert isinstance(
            GENERATED["synthetic"].decode(RawMessage(topic, payload, received_ms)), Decoded
        )


def test_every_edge_value_in_every_place_decodes_as_the_closures_do() -> None:
    checked = 0
    for kind, topic, payload, received_ms in CASES:
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue  # the CSV and text cases: the property test swaps their cells
        for place in _leaves(document):
            for value in EDGES:
                changed = orjson.loads(payload)
                _swap(changed, place, value)
                _same(kind, topic, json.dumps(changed).encode(), received_ms)
                checked += 1
    assert checked > 5_000
