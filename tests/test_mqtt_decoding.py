"""paho's PUBLISH decoding with the hub's cheaper Properties factory, and the hub's own
pass over plain PUBLISH packets (hub.ingest.mqtt)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.ingest.mqtt import MqttLink, _plain_publish  # importing it installs the factory
from hub.model import RawMessage
from hub.settings import MqttEndpoint

TOPIC = b"application/prato-parking/device/a1b2c3d4e5f60708/event/up"
PAYLOAD = b'{"deviceInfo":{"devEui":"a1b2c3d4e5f60708"},"fPort":2,"data":"AQID"}'


def publish_packet(mid: int, properties: bytes) -> bytes:
    """The variable part of a QoS 1 PUBLISH: topic, packet id, properties, payload."""
    return (
        struct.pack("!H", len(TOPIC))
        + TOPIC
        + struct.pack("!H", mid)
        + bytes([len(properties)])
        + properties
        + PAYLOAD
    )


def expiry_type_and_user_properties() -> bytes:
    return (
        bytes([0x02])
        + struct.pack("!I", 60)  # message expiry interval
        + bytes([0x03])
        + struct.pack("!H", 4)
        + b"json"  # content type
        + bytes([0x26])
        + struct.pack("!H", 1)
        + b"k"
        + struct.pack("!H", 1)
        + b"v"  # a user property
    )


def names(properties: Properties) -> dict[str, object]:
    return {
        n.replace(" ", ""): getattr(properties, n.replace(" ", ""), None) for n in properties.names
    }


def test_a_publish_without_properties_decodes_as_paho_would() -> None:
    result = _packet.decode_publish(0x32, publish_packet(7, b""), MQTTProtocolVersion.MQTTv5)
    assert (result.topic, result.mid, result.qos, result.payload) == (TOPIC, 7, 1, PAYLOAD)
    assert isinstance(result.properties, Properties)
    assert result.properties.packetType == PacketTypes.PUBLISH
    assert all(value is None for value in names(result.properties).values())


def test_properties_decode_to_the_same_values_as_a_plain_paho_object() -> None:
    raw = expiry_type_and_user_properties()
    result = _packet.decode_publish(0x32, publish_packet(8, raw), MQTTProtocolVersion.MQTTv5)
    plain = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    plain.unpack(bytes([len(raw)]) + raw)  # type: ignore[no-untyped-call]
    assert result.properties is not None
    assert names(result.properties) == names(plain)
    assert getattr(result.properties, "MessageExpiryInterval", None) == 60
    assert getattr(result.properties, "ContentType", None) == "json"
    assert result.payload == PAYLOAD


def test_decoded_properties_never_leak_into_the_next_packet() -> None:
    raw = expiry_type_and_user_properties()
    first = _packet.decode_publish(0x32, publish_packet(1, raw), MQTTProtocolVersion.MQTTv5)
    second = _packet.decode_publish(0x32, publish_packet(2, b""), MQTTProtocolVersion.MQTTv5)
    assert first.properties is not None
    assert second.properties is not None
    assert not hasattr(second.properties, "ContentType")
    second.properties.ResponseTopic = "r"
    assert not hasattr(first.properties, "ResponseTopic")
    assert first.properties.names is second.properties.names  # only the lookup tables shared


# -- the hub's own pass over plain PUBLISH packets ------------------------------------------


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    mid: int = 0,
    retain: bool = False,
    props: bytes = b"",
    *,
    dup: bool = False,
) -> bytes:
    """A whole MQTT v5 PUBLISH packet."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    body += remaining_length(len(props)) + props + payload
    first = 0x30 | int(dup) << 3 | qos << 1 | int(retain)
    return bytes([first]) + remaining_length(len(body)) + body


topics = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80).map(
    lambda t: t.encode("utf-8")
)


@settings(max_examples=300, deadline=None)
@given(
    topic=topics,
    payload=st.binary(max_size=20_000),
    qos=st.sampled_from([0, 1]),
    mid=st.integers(1, 65535),
    retain=st.booleans(),
    dup=st.booleans(),
)
def test_a_plain_publish_reads_as_paho_reads_it(
    topic: bytes, payload: bytes, qos: int, mid: int, retain: bool, dup: bool
) -> None:
    packet = publish(topic, payload, qos, mid, retain, dup=dup and qos == 1)  # a redelivery
    pad = b"\x00\x01"  # whatever follows the packet is not read
    found = _plain_publish(b"xx" + packet + pad, 2)
    assert found is not None
    end, got_topic, got_payload, got_qos, got_mid, got_retain = found
    assert end == 2 + len(packet)
    body_at = 2  # after the first byte and the remaining length, whose last byte has no high bit
    while packet[body_at - 1] & 0x80:
        body_at += 1
    paho = _packet.decode_publish(packet[0], packet[body_at:], MQTTProtocolVersion.MQTTv5)
    assert (got_topic.encode("utf-8"), got_payload, got_qos, got_retain) == (
        paho.topic,
        paho.payload,
        paho.qos,
        paho.retain,
    )
    assert got_mid == (paho.mid if qos else 0)
    # every truncation of the packet is "not all there": left for the next read
    for cut in (1, 2, len(packet) // 2, len(packet) - 1):
        assert _plain_publish(packet[:cut], 0) is None


@pytest.mark.parametrize(
    "packet",
    [
        publish(b"t/1", b"{}", 1, 5, props=expiry_type_and_user_properties()),  # properties
        publish(b"t/1", b"{}", 2, 5)[:1] + publish(b"t/1", b"{}", 2, 5)[1:],  # QoS 2
        bytes([0x34]) + publish(b"t/1", b"{}", 2, 5)[1:],  # QoS 2 flag byte
        publish(b"", b"{}", 0),  # a topic alias (an empty topic name)
        publish(b"\xff\xfe", b"{}", 0),  # a topic that is not UTF-8
        publish(b"t/1", b"{}", 0, dup=True),  # DUP at QoS 0: a protocol error, paho's to judge
        bytes([0xD0, 0x00]),  # PINGRESP
        bytes([0x40, 0x02, 0x00, 0x01]),  # PUBACK
        bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # a remaining length of five bytes
        bytes([0x30, 0x02, 0x00, 0x05]),  # a topic longer than its packet
    ],
)
def test_anything_but_a_plain_publish_is_left_to_paho(packet: bytes) -> None:
    assert _plain_publish(packet, 0) is None


class ChunkedSocket:
    """A socket whose recv hands out fixed chunks, then has nothing more to read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        assert len(chunk) <= size
        return chunk

    def close(self) -> None:
        self.chunks = []


def receive_all(stream: bytes, cuts: list[int]) -> tuple[list[RawMessage], MqttLink]:
    """Feed ``stream`` cut at ``cuts`` through an MqttLink's client; what its sink got."""
    got: list[RawMessage] = []
    link = MqttLink(MqttEndpoint("mqtt://127.0.0.1:9"), "t", clock_ms=lambda: 42)
    edges = [0, *sorted(set(cuts)), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
    client = link._client  # a unit test of the read path: no broker, a scripted socket
    client._sock = ChunkedSocket(chunks)  # type: ignore[assignment]
    link._sink = got.append  # what start() does, without connecting
    client.on_raw_many = got.extend
    for _ in range(len(chunks) + 5):  # one socket read per loop_read
        client.loop_read()
    return got, link


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from([0, 1]), st.integers(0, 700), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    data=st.data(),
)
def test_a_stream_cut_anywhere_delivers_every_message_once_and_in_order(
    specs: list[tuple[int, int, bool]], data: st.DataObject
) -> None:
    packets: list[bytes] = []
    expected: list[RawMessage] = []
    for k, (qos, size, with_props) in enumerate(specs):
        topic, payload = f"city/dev-{k}/up", bytes([k % 256]) * size
        props = expiry_type_and_user_properties() if with_props else b""
        packets.append(publish(topic.encode(), payload, qos, k + 1, k % 3 == 0, props))
        expected.append(RawMessage(topic, payload, 42, qos, k + 1 if qos else 0, k % 3 == 0))
        if k % 7 == 3:
            packets.append(bytes([0xD0, 0x00]))  # a PINGRESP between them
    stream = b"".join(packets)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))
    got, _ = receive_all(stream, cuts)
    assert [(m.topic, m.payload, m.qos, m.mid, m.retain) for m in got] == [
        (m.topic, m.payload, m.qos, m.mid, m.retain) for m in expected
    ]
    assert all(m.received_ms == 42 for m in got)


def test_a_paused_link_reads_no_further_message() -> None:
    first = b"".join(publish(b"t/%d" % k, b"{}", 1, k + 1) for k in range(3))
    later = b"".join(publish(b"t/%d" % k, b"{}", 1, k + 1) for k in range(3, 10))
    got: list[RawMessage] = []
    link = MqttLink(MqttEndpoint("mqtt://127.0.0.1:9"), "t", clock_ms=lambda: 42)
    client = link._client
    client._sock = ChunkedSocket([first, later])  # type: ignore[assignment]

    def take(messages: list[RawMessage]) -> None:
        got.extend(messages)
        link.pause()

    link._sink = got.append
    client.on_raw_many = take
    for _ in range(3):
        client.loop_read()
    assert [m.topic for m in got] == ["t/0", "t/1", "t/2"]  # the rest stays unacked
    assert client.on_raw_many is None
    assert link._sink is None


class ScriptedSocket(ChunkedSocket):
    """A ChunkedSocket that also records what the client sends."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.sent = b""

    def send(self, data: bytes) -> int:
        self.sent += bytes(data)
        return len(data)

    def pending(self) -> int:
        return 0


def pubacks(sent: bytes) -> list[int]:
    """The packet ids of the PUBACKs in a stream the client wrote (4-byte PUBACKs only)."""
    return [struct.unpack("!H", sent[i + 2 : i + 4])[0] for i in range(0, len(sent), 4)]


def _scripted(link: MqttLink, stream: bytes) -> tuple[list[RawMessage], ScriptedSocket]:
    """Feed ``stream`` to ``link``'s client in one read; what its sink got, what it sent."""
    got: list[RawMessage] = []
    client = link._client
    sock = ScriptedSocket([stream])
    client._sock = sock  # type: ignore[assignment]
    link._sink = got.append  # what start() does, without connecting
    client.on_raw_many = got.extend
    for _ in range(3):
        client.loop_read()
    client.loop_write()
    return got, sock


def test_a_client_without_manual_acks_still_acks_every_message() -> None:
    # paho acknowledges a QoS 1 message itself when manual acks are off (the tests' probes,
    # any plain subscriber built on MqttLink); the fast pass must not take that away from it
    link = MqttLink(MqttEndpoint("mqtt://127.0.0.1:9"), "t", manual_ack=False)
    stream = b"".join(publish(b"t/%d" % k, b"{}", 1, k + 1) for k in range(5))
    got, sock = _scripted(link, stream)
    assert [m.mid for m in got] == [1, 2, 3, 4, 5]
    assert sorted(pubacks(sock.sent)) == [1, 2, 3, 4, 5]


def test_an_mqtt_3_publish_keeps_its_whole_payload() -> None:
    # MQTT 3.1.1 has no properties byte: a payload starting with a zero byte must not lose it
    link = MqttLink(MqttEndpoint("mqtt://127.0.0.1:9"), "t")
    link._client._protocol = MQTTProtocolVersion.MQTTv311
    body = struct.pack("!H", 3) + b"t/1" + struct.pack("!H", 9) + b"\x00abc"
    got, _ = _scripted(link, bytes([0x32, len(body)]) + body)
    assert [(m.topic, m.payload, m.mid) for m in got] == [("t/1", b"\x00abc", 9)]


def test_a_late_confirmation_never_confirms_a_later_publish_with_the_same_id() -> None:
    link = MqttLink(MqttEndpoint("mqtt://127.0.0.1:9"), "t")
    client = link._client
    mid = link.publish("hub/deadletter/x", b"1", qos=1)  # not connected: queued
    assert not link.wait_published([mid], 0.01)  # the wait gives up
    client._sock = ChunkedSocket([bytes([0x40, 2]) + struct.pack("!H", mid)])  # type: ignore[assignment]
    client.loop_read()  # its PUBACK comes late
    client._last_mid = mid - 1  # 65,535 publishes later: the same id again
    again = link.publish("hub/deadletter/x", b"2", qos=1)
    assert again == mid
    assert not link.wait_published([again], 0.01), "confirmed by the earlier publish's PUBACK"
