"""paho's PUBLISH decoding with the hub's cheaper Properties factory (hub.ingest.mqtt)."""

from __future__ import annotations

import struct

from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import hub.ingest.mqtt  # noqa: F401  # installs the factory

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
