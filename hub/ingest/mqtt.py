"""The MQTT client: the only module that imports paho-mqtt.

``MqttLink`` holds one MQTT v5 connection with a persistent session (fixed client id,
clean start off, session expiry) and manual acknowledgement: a QoS 1 message is PUBACKed only
when the pipeline calls ``ack`` after its points are durably written. Until then the broker
keeps it and redelivers it after a reconnect or a hub restart.

paho runs its network loop in its own thread, which only turns PUBLISH packets into
``RawMessage`` objects and hands them to the sink (a bounded queue put), so decoding and I/O
never run on that thread. paho reads a packet with three or four small ``recv`` calls and one
``select`` per packet; each gives up the GIL, and winning it back from the busy decode thread
can take a whole switch interval. ``_BufferedClient`` reads the socket in 256 kB chunks and
parses every packet already read before it waits again, so the network thread keeps the GIL
while it has data; the plain PUBLISH packets of each read skip paho's per-packet machinery
and reach the sink as one list (``_read_publishes``).
Reconnects use paho's exponential backoff (1 s .. 30 s); subscriptions are renewed on every
(re)connect, with retain-handling "only on a new subscription" so a reconnect does not replay
retained messages.
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.errors import BrokerError
from hub.model import RawMessage
from hub.settings import MqttEndpoint

log = logging.getLogger(__name__)

MessageSink = Callable[[RawMessage], None]
BatchSink = Callable[[list[RawMessage]], None]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch: the receive time stamped on each message."""
    return time.time_ns() // 1_000_000


READ_CHUNK = 256 * 1024

# paho builds a Properties object for every MQTT v5 packet it decodes: Properties.__init__
# rebuilds its lookup tables (a list and three dicts of every property name) and unpack()
# first clears every possible property by name. For a PUBLISH that cost more than the rest
# of paho's decoding (39 us of 49). The tables never change, so paho's packet decoder gets a
# factory that copies them from one prototype per packet type, and a packet without
# properties (one zero byte, what field devices send) skips the clearing.
_PROPERTY_TABLES: dict[int, dict[str, Any]] = {}


class _LeanProperties(Properties):
    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":
            return self, 1  # no properties: a fresh object has none to clear
        return super().unpack(buffer)  # type: ignore[no-any-return,no-untyped-call]  # paho lacks annotations here


def _properties(packet_type: int) -> Properties:
    tables = _PROPERTY_TABLES.get(packet_type)
    if tables is None:
        tables = _PROPERTY_TABLES[packet_type] = dict(vars(Properties(packet_type)))  # type: ignore[no-untyped-call]  # paho lacks annotations here
    made: Properties = _LeanProperties.__new__(_LeanProperties)
    vars(made).update(tables)
    return made


setattr(_packet, "Properties", _properties)  # noqa: B010  # paho's own name for it
_PUBACK = struct.Struct("!BBH")
# PUBLISH at QoS 0 or 1, retained or not; at QoS 1 also a redelivery (DUP, 0x08): the DUP
# flag must be 0 at QoS 0
_PUBLISH_QOS_0_1 = frozenset((0x30, 0x31, 0x32, 0x33, 0x3A, 0x3B))


def _plain_publish(buffer: bytes, at: int) -> tuple[int, str, bytes, int, int, bool] | None:
    """The complete QoS 0/1 MQTT v5 PUBLISH without properties at ``buffer[at:]``, as
    (end, topic, payload, qos, mid, retain); ``None`` for anything else, or not all there."""
    size = len(buffer)
    if at >= size or buffer[at] not in _PUBLISH_QOS_0_1:
        return None
    first = buffer[at]
    length, shift, pos = 0, 0, at + 1
    while True:  # remaining length: up to four 7-bit groups, low first
        if pos >= size or shift > 21:
            return None
        byte = buffer[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    end = pos + length
    if end > size or length < 3:
        return None
    topic_end = pos + 2 + ((buffer[pos] << 8) | buffer[pos + 1])
    if topic_end == pos + 2:
        return None  # a topic alias: paho knows what to do (or fails as before)
    qos = (first >> 1) & 3
    header_end = topic_end + 2 if qos else topic_end  # QoS 1: a packet id after the topic
    if header_end >= end or buffer[header_end] != 0:
        return None  # properties present (or malformed): paho's path
    mid = (buffer[topic_end] << 8) | buffer[topic_end + 1] if qos else 0
    try:
        topic = buffer[pos + 2 : topic_end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return end, topic, buffer[header_end + 1 : end], qos, mid, bool(first & 1)


class _BufferedClient(paho.Client):
    """paho's client reading its socket in large chunks (see the module docstring).

    One ``loop_read`` reads the socket once (up to ``READ_CHUNK``) and parses every packet in
    it, then returns: paho writes (PUBACKs, our own publishes) only between reads, so reading
    on while the broker keeps sending would starve them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = b""
        self._read_at = 0
        self._may_read_socket = False
        #: where plain PUBLISH packets go, bypassing paho's on_message (see _read_publishes)
        self.on_raw_many: BatchSink | None = None
        self.clock_ms: Callable[[], int] = wall_clock_ms

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_at >= len(self._read_buffer):
            if not self._may_read_socket:
                raise BlockingIOError  # this loop_read had its chunk: paho waits in select()
            self._may_read_socket = False
            # raises BlockingIOError when the socket has nothing: paho waits in select()
            self._read_buffer = super()._sock_recv(READ_CHUNK)
            self._read_at = 0
        chunk = self._read_buffer[self._read_at : self._read_at + bufsize]
        self._read_at += len(chunk)
        return chunk

    def _sock_close(self) -> None:
        # bytes of a closed connection must never be parsed as the next one's
        self._read_buffer, self._read_at = b"", 0
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self._may_read_socket = True
        rc = super().loop_read(max_packets)
        # select() cannot see bytes already read: parse them all before waiting again
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._read_at < len(self._read_buffer):
            if self._in_packet["command"] == 0 and self._read_publishes():
                continue
            rc = super().loop_read(max_packets)
        self._may_read_socket = False
        return rc

    def _read_publishes(self) -> bool:
        """Hand every complete, plain PUBLISH at the read position to ``on_raw_many``.

        paho turns each PUBLISH into an ``MQTTMessage`` through a dozen calls (packet state,
        decoding, a debug log line, the message object and its ``MQTTMessageInfo``): about
        8 us of the 10 us a message cost to receive. Here a QoS 0 or 1 PUBLISH with a topic
        name and no properties (what devices and brokers send) becomes a ``RawMessage`` in
        one pass over the buffer, and the pass's messages go to ``on_raw_many`` as one list.
        Anything else (another packet type, QoS 2, properties, a topic alias, a packet not yet
        complete, a malformed one) stops the pass and goes through paho as before. False when
        nothing was read here.
        """
        if self.on_raw_many is None or not self._manual_ack or self._protocol != paho.MQTTv5:
            # paho's path: it PUBACKs a QoS 1 message itself without manual acks, and parses
            # MQTT 3.1.1 (no properties byte) - neither is the hub's own link
            return False
        buffer, at = self._read_buffer, self._read_at
        clock_ms = self.clock_ms
        taken: list[RawMessage] = []
        with self._in_callback_mutex:
            while True:
                found = _plain_publish(buffer, at)
                if found is None:
                    break
                at, topic, payload, qos, mid, retain = found
                self._read_at = at
                # stamped one by one, as paho's path does: a point without a device time is
                # stored at its receive time, and one stamp for a whole read would fold a
                # device's queued messages into one point
                taken.append(RawMessage(topic, payload, clock_ms(), qos, mid, retain))
            deliver = self.on_raw_many  # None once paused: what was read stays unacked
            if taken and deliver is not None:
                deliver(taken)
        if taken:
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        return bool(taken)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho first matches every message's topic against per-topic callbacks; the hub
        # registers none, so its on_message is called directly (3-4 % of the hub's CPU)
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK (success) for each QoS 1 ``mid``, queued as one write.

        ``ack(mid, 1)`` per message queues one packet each, and each wakes the network
        thread through its socket pair. A PUBACK is 4 fixed bytes (MQTT v5 lets a success
        PUBACK omit its reason code), so the batch's PUBACKs go out as one buffer.
        """
        if mids and self._manual_ack:
            packets = b"".join(_PUBACK.pack(PUBACK, 2, mid) for mid in mids)
            self._packet_queue(PUBACK, packets, 0, 0)


def _one_by_one(sink: MessageSink) -> BatchSink:
    def each(messages: list[RawMessage]) -> None:
        for message in messages:
            sink(message)

    return each


class MqttLink:
    """One broker connection: subscribe, receive, acknowledge and publish."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        client_id: str,
        *,
        persistent: bool = True,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 20_000,
        keepalive_s: int = 30,
        ca_file: str | None = None,
        manual_ack: bool = True,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._endpoint = endpoint
        self._persistent = persistent
        self._keepalive = keepalive_s
        self._client = _BufferedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.enable_logger(logging.getLogger("hub.mqtt.paho"))
        if endpoint.username is not None:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self._client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Dead letters and alerts are few; a window of 200 keeps their confirmation fast.
        self._client.max_inflight_messages_set(200)
        self._props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho lacks annotations here
        self._props.SessionExpiryInterval = session_expiry_s if persistent else 0
        self._props.ReceiveMaximum = receive_maximum
        self._subscriptions: list[tuple[str, int]] = []
        self._sink: MessageSink | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._published: set[int] = set()
        self._publish_cond = threading.Condition()
        self.connects = 0
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.clock_ms = clock_ms  # receive times, on both of its paths

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("broker %r refused the connection: %s", self._endpoint, reason)
            return
        self._refused = None
        self.connects += 1
        log.info("connected to %r (session present: %s)", self._endpoint, flags.session_present)
        self._subscribed.clear()
        if self._subscriptions:
            client.subscribe(
                [
                    (topic, SubscribeOptions(qos=qos, retainHandling=1))
                    for topic, qos in self._subscriptions
                ]
            )
        if not self._subscriptions or flags.session_present:
            # A resumed session still holds the subscriptions; the renewal's SUBACK comes
            # after whatever backlog the broker kept for us, which may take minutes to read.
            self._subscribed.set()
        self._connected.set()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._refused = "subscription refused: " + ", ".join(failed)
            log.error("broker refused subscriptions: %s", failed)
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        log.warning("disconnected from %r: %s", self._endpoint, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        sink = self._sink
        if sink is None:
            return  # stopping: not acked, so the broker redelivers it after restart
        sink(
            RawMessage(
                message.topic,
                bytes(message.payload),
                self._client.clock_ms(),
                message.qos,
                message.mid,
                message.retain,
            )
        )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._publish_cond:
            self._published.add(mid)
            self._publish_cond.notify_all()

    # -- public surface ------------------------------------------------------------------

    def start(
        self,
        subscriptions: Sequence[str],
        qos: int,
        sink: MessageSink | None,
        *,
        batch_sink: BatchSink | None = None,
    ) -> None:
        """Connect in the background (with retries) and subscribe to ``subscriptions``.

        Messages go to ``sink`` one by one, or, read from the socket together, to
        ``batch_sink`` as one list when it is given.
        """
        self._subscriptions = [(topic, qos) for topic in subscriptions]
        self._sink = sink
        self._client.on_raw_many = batch_sink or (_one_by_one(sink) if sink else None)
        self._client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=self._keepalive,
            clean_start=not self._persistent,
            properties=self._props,
        )
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> None:
        """Block until connected and subscribed; ``BrokerError`` on timeout or refusal."""
        deadline = time.monotonic() + timeout_s
        while not (self._connected.wait(0.05) and self._subscribed.wait(0.05)):
            if self._refused is not None:
                raise BrokerError(f"broker {self._endpoint!r} refused the hub: {self._refused}")
            if time.monotonic() > deadline:
                if self._connected.is_set():
                    raise BrokerError(
                        f"broker {self._endpoint!r} did not confirm the subscriptions "
                        f"in {timeout_s} s"
                    )
                raise BrokerError(f"broker {self._endpoint!r} not reachable in {timeout_s} s")

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        return self._connected.is_set()

    def pause(self) -> None:
        """Stop handing messages to the sink (they stay unacked, so the broker keeps them)."""
        self._sink = None
        self._client.on_raw_many = None

    def ack(self, message: RawMessage) -> None:
        """Acknowledge a QoS 1 message to the broker (no-op for QoS 0)."""
        self.ack_many([message])

    def ack_many(self, messages: Sequence[RawMessage]) -> None:
        """Acknowledge the QoS 1 messages of ``messages`` with one write to the socket."""
        self._client.ack_many([m.mid for m in messages if m.qos == 1])

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a publish; returns its message id for ``wait_published`` (QoS 1)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN still queues a QoS 1 message: paho sends it after reconnecting.
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        with self._publish_cond:
            # (paho refuses to say for a message queued while disconnected: not sent yet)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not info.is_published():
                # a confirmation of this id already recorded belongs to an earlier publish
                # whose wait gave up (ids wrap at 65,535): it must not confirm this one
                self._published.discard(info.mid)
        return info.mid

    def wait_published(self, mids: Sequence[int], timeout_s: float) -> bool:
        """True once the broker confirmed every QoS 1 publish in ``mids``."""
        deadline = time.monotonic() + timeout_s
        pending = set(mids)
        with self._publish_cond:
            while True:
                done = pending & self._published
                self._published -= done
                pending -= done
                if not pending:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._publish_cond.wait(remaining)

    def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.pause()
        self._client.disconnect()
        self._client.loop_stop()
