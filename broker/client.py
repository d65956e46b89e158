"""BusClient: the one MQTT connection a meter, validator or tool keeps to the bus.

Everything on the bus is QoS 1 (docs/PROTOCOL.md §7), so this thin paho-mqtt 2.x wrapper fixes
the QoS, keeps the broker-side session across outages, re-subscribes after every
reconnect, and tells the caller when the broker has taken a message over (PUBACK).
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

log = logging.getLogger(__name__)

QOS = 1
Handler = Callable[[str, bytes, bool], None]
"""handler(topic, payload, retained) for messages matching a subscription."""
DeferredHandler = Callable[[str, bytes, bool, Callable[[], None]], None]
"""handler(topic, payload, retained, ack): the message is acknowledged (PUBACK) only by ack()."""


class AckTracker:
    """Pairs each packet id (mid) with its acknowledgement, whichever we learn of first.

    paho returns the mid only when publish()/subscribe() returns, but its network thread
    may already have handled the PUBACK/SUBACK by then; such an early ack is kept until
    expect() claims it, so no acknowledgement is lost and none is reported twice.

    Use one tracker per kind of packet: PUBLISH and SUBSCRIBE draw their mids from one
    counter that wraps after 65535, so a PUBACK can carry the mid of a SUBSCRIBE whose
    SUBACK never came, and must not be handed to that SUBSCRIBE's on_ack.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[Any], None]] = {}
        self._early: dict[int, Any] = {}

    def expect(self, mid: int, on_ack: Callable[[Any], None]) -> None:
        """Call on_ack(result) when mid is acknowledged (at once if it already was)."""
        with self._lock:
            early = mid in self._early
            if early:
                result = self._early.pop(mid)
            else:
                self._waiting[mid] = on_ack
        if early:
            on_ack(result)

    def acked(self, mid: int, result: Any = None) -> None:
        """Record that the broker acknowledged mid; result is handed to its on_ack."""
        with self._lock:
            on_ack = self._waiting.pop(mid, None)
            if on_ack is None:
                self._early[mid] = result
        if on_ack is not None:
            on_ack(result)


class _NoSocketNoise(logging.Filter):
    """Drops paho 2.2's ERROR "Client is not connected. Socket: None" record.

    paho logs it whenever its loop turns without a socket: after every clean close() and
    after every failed reconnect attempt. Both are normal for us and logged by BusClient
    itself at a fitting level, so an operator does not see an error for each of them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected. Socket: None")


_paho_log = log.getChild("paho")
_paho_log.addFilter(_NoSocketNoise())


def _call_safely(callback: Callable[..., None], *args: Any) -> None:
    """Run a callback on paho's network thread, logging what it raises.

    An exception escaping into paho ends its network thread, and with it the connection
    and every reconnect, so a bug in one handler must not take the whole bus down.
    """
    try:
        callback(*args)
    except Exception:
        log.exception("callback %r failed", callback)


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """callback as a paho callback: whatever it raises is logged (see _call_safely), not re-raised by paho."""
    return functools.partial(_call_safely, callback)


class TlsFiles(NamedTuple):
    """A client's certificate and key and the broker CA's certificate (deploy.bus's layout)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, home: Path) -> TlsFiles:
        files = cls(home / "ca.crt", home / "mqtt.crt", home / "mqtt.key")
        missing = [str(path) for path in files if not path.exists()]
        if missing:
            raise FileNotFoundError(f"no TLS files {', '.join(missing)}: re-run `spb-deploy provision`")
        return files


class BusClient:
    """One MQTT 3.1.1 connection with QoS 1 everywhere and automatic reconnects.

    `connected` is set once a (re)connection is ready: subscriptions restored and
    acknowledged, then the `on_connect` hooks run. Handlers and hooks run on paho's
    network thread; they must not block (in particular not on wait_acked).
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
        clean_session: bool = False,
        keepalive: int = 30,
        reconnect_min_delay: float = 1.0,
        reconnect_max_delay: float = 60.0,
        max_inflight: int = 100,
        manual_ack: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        """will is (topic, payload, retain), published with QoS 1 if we vanish without DISCONNECT.

        clean_session=False keeps our session at the broker while we are away, so QoS 1
        messages for our subscriptions are queued for us rather than lost.

        manual_ack=True lets subscribe_deferred handlers acknowledge a message only once it
        is safe on disk: until then the broker keeps it and resends it after a reconnect.

        tls: mutual TLS with these files; the broker's certificate must name `host`.
        """
        self.host, self.port, self.client_id = host, port, client_id
        self.keepalive = keepalive
        self.connected = threading.Event()
        # Whether the broker still had our session at the last connect: False after a broker
        # lost its state (or on our first connect), when it also lost what we had retained.
        self.session_present = False
        self.on_connect: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._subscriptions: dict[str, threading.Event] = {}
        self._unsubscribing: set[str] = set()  # dropped filters the broker's session may still have
        self._session_up = False
        # paho sends an unacknowledged message again with the same mid after a reconnect,
        # so a publish keeps waiting for its PUBACK across connections...
        self._pubacks = AckTracker()
        # ...while a SUBACK not received is lost with its connection: _handle_disconnect
        # starts a new tracker, and the next connect's re-subscribe expects new SUBACKs.
        self._subacks = AckTracker()
        self._unacked: dict[int, _Pending] = {}
        self._manual_ack = manual_ack
        self._generation = 0  # connections so far: an ack belongs to the one that delivered

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
        client.enable_logger(_paho_log)
        if tls is not None:
            client.tls_set(
                ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key), tls_version=ssl.PROTOCOL_TLS_CLIENT
            )
        if will is not None:
            topic, payload, retain = will
            client.will_set(topic, payload, qos=QOS, retain=retain)
        # paho annotates the delays int, but only doubles, caps and waits on them: fractions of a second work.
        client.reconnect_delay_set(min_delay=reconnect_min_delay, max_delay=reconnect_max_delay)  # type: ignore[arg-type]
        # paho's default of 20 unacknowledged messages caps a meter draining a backlog after
        # an outage at 20 per round trip; a larger window drains it faster. It stays bounded
        # because every message in flight at a reconnect is sent again (DUP) as a duplicate.
        client.max_inflight_messages_set(max_inflight)
        # 0 = no limit: a QoS 1 message published while the broker is unreachable waits in
        # paho's queue until we reconnect instead of being refused (MQTT_ERR_QUEUE_SIZE).
        client.max_queued_messages_set(0)
        client.on_connect = _guarded(self._handle_connect)
        client.on_disconnect = _guarded(self._handle_disconnect)
        client.on_connect_fail = _guarded(self._handle_connect_fail)
        client.on_subscribe = _guarded(self._handle_subscribe)
        client.on_publish = _guarded(self._handle_publish)
        client.on_message = _guarded(self._handle_unmatched)
        self._client = client

    def connect(self) -> None:
        """Start connecting in the background; returns at once and keeps retrying while the broker is down."""
        self._client.connect_async(self.host, self.port, self.keepalive)
        self._client.loop_start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Whether the client is (or, within timeout seconds, becomes) connected and ready."""
        return self.connected.wait(timeout)

    def close(self) -> None:
        """Send DISCONNECT, so the broker discards our will, and stop the network thread.

        Not guaranteed: paho closes the socket right after DISCONNECT, and a message the
        broker is delivering at that instant makes our kernel answer with a reset, which
        can discard the DISCONNECT at the broker (seen in ~5% of closes under constant
        traffic). A will must therefore say what a clean shutdown says anyway.
        """
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def subscribe(self, topic_filter: str, handler: Handler) -> threading.Event:
        """Route messages matching topic_filter to handler, now and after every reconnect.

        Returns an Event set once the broker has granted the subscription. Subscribing
        to the same filter again replaces its handler; a message matching several filters
        reaches each of their handlers.
        """
        if self._manual_ack:

            def acking(topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
                try:
                    handler(topic, payload, retained)
                finally:
                    ack()

            return self.subscribe_deferred(topic_filter, acking)
        return self._subscribe(topic_filter, _dispatcher(handler))

    def subscribe_deferred(self, topic_filter: str, handler: DeferredHandler) -> threading.Event:
        """Like subscribe, for a manual_ack client: the handler acknowledges each message itself.

        The ack()s of one connection must be called in the order the messages arrived (MQTT
        3.1.1 §4.6); an ack() after a reconnect does nothing, since the broker sends that
        message again on the new connection.
        """
        if not self._manual_ack:
            raise ValueError("subscribe_deferred needs BusClient(manual_ack=True)")

        def on_message(client, userdata, message: mqtt.MQTTMessage) -> None:
            # A QoS 0 message (anyone may publish one) has no PUBACK: acking its mid 0 is a
            # protocol error that makes the broker drop us.
            ack = functools.partial(self._ack, self._generation, message.mid) if message.qos else _no_ack
            _call_safely(handler, message.topic, message.payload, bool(message.retain), ack)

        return self._subscribe(topic_filter, on_message)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop routing topic_filter, now and after reconnects (e.g. a settled trade's status).

        While disconnected the UNSUBSCRIBE waits for the next connect: the broker keeps our
        session, filters included, and would go on queueing for a filter we dropped.
        """
        with self._lock:
            if self._subscriptions.pop(topic_filter, None) is None:
                return
            self._unsubscribing.add(topic_filter)
            session_up = self._session_up
        self._client.message_callback_remove(topic_filter)
        if session_up:
            self._send_unsubscribe()

    def _send_unsubscribe(self) -> None:
        with self._lock:
            filters, self._unsubscribing = list(self._unsubscribing), set()
        if filters and self._client.unsubscribe(filters)[0] != MQTTErrorCode.MQTT_ERR_SUCCESS:
            with self._lock:
                self._unsubscribing.update(filters)  # not sent: the next connect sends it

    def _ack(self, generation: int, mid: int) -> None:
        if generation == self._generation:
            self._client.ack(mid, QOS)

    def _subscribe(self, topic_filter: str, on_message: Callable[..., None]) -> threading.Event:
        granted = threading.Event()
        self._client.message_callback_add(topic_filter, on_message)
        with self._lock:
            self._subscriptions[topic_filter] = granted
            session_up = self._session_up
        if session_up:
            self._send_subscribe({topic_filter: granted})
        return granted

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, on_ack: Callable[[int], None] | None = None
    ) -> mqtt.MQTTMessageInfo:
        """Publish with QoS 1, queued in paho while we are offline.

        on_ack(mid) runs once the broker acknowledged the message (PUBACK), normally on
        paho's network thread. Use wait_acked, not info.wait_for_publish(): paho leaves
        info.rc at MQTT_ERR_NO_CONN for a message queued while offline, and
        wait_for_publish raises on that even after the message has been delivered.
        """
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            log.error("paho refused to queue a message for %s (mid %d clash)", topic, info.mid)
            return info
        pending = _Pending(self, info, on_ack)
        with self._lock:
            self._unacked[info.mid] = pending
        self._pubacks.expect(info.mid, pending.settle)
        return info

    def wait_acked(self, info: mqtt.MQTTMessageInfo, timeout: float | None = None) -> bool:
        """Whether the broker acknowledged a message from our publish() within timeout s (None: no limit)."""
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return False
        with self._lock:
            pending = self._unacked.get(info.mid)
            if pending is None or pending.info is not info:
                return True  # settled already; the mid may even have been reused since
            if pending.acked is None:  # made only when someone waits: publish is on the ledger's hot path
                pending.acked = threading.Event()
            acked = pending.acked
        return acked.wait(timeout)

    def _send_subscribe(self, filters: dict[str, threading.Event], then: Callable[[], None] | None = None) -> None:
        """One SUBSCRIBE for filters; on SUBACK set the Events of the granted ones, then run `then`.

        The tracker is taken before sending: should the connection drop before expect(),
        the expectation lands in that connection's discarded tracker, not in the next one.
        """
        subacks = self._subacks
        rc, mid = self._client.subscribe([(topic_filter, QOS) for topic_filter in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("SUBSCRIBE not sent (%s); the next connect restores it", mqtt.error_string(rc))
            return
        assert mid is not None, "paho numbers every SUBSCRIBE it sent"

        def on_suback(reason_codes: list) -> None:
            # A SUBACK carries one code per filter of its SUBSCRIBE (MQTT 3.1.1 §3.9.3).
            for (topic_filter, granted), reason in zip(filters.items(), reason_codes, strict=True):
                if reason.is_failure:
                    log.error("broker refused subscription %s: %s", topic_filter, reason)
                else:
                    granted.set()
            if then is not None:
                then()

        subacks.expect(mid, on_suback)

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.host,
            self.port,
            self.client_id,
            flags.session_present,
        )
        self.session_present = bool(flags.session_present)  # read by on_connect hooks
        with self._lock:
            self._session_up = True
            self._generation += 1
            restore = dict(self._subscriptions)
        self._send_unsubscribe()
        if restore:
            self._send_subscribe(restore, then=self._ready)
        else:
            self._ready()

    def _ready(self) -> None:
        for hook in list(self.on_connect):
            _call_safely(hook)
        self.connected.set()

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self._session_up = False
        self._subacks = AckTracker()
        self.connected.clear()
        if reason_code.is_failure:
            log.warning("lost connection to %s:%d (%s); reconnecting", self.host, self.port, reason_code)

    def _handle_connect_fail(self, client, userdata) -> None:
        log.info("cannot reach broker %s:%d; retrying", self.host, self.port)

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subacks.acked(mid, reason_codes)

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._pubacks.acked(mid, reason_code)

    def _handle_unmatched(self, client, userdata, message) -> None:
        """A message no filter of ours matches: the broker kept a subscription this client
        dropped (a persistent session from before a crash, an unsubscribe still in flight).
        A manual_ack client acknowledges it anyway, or each would hold one of the broker's
        in-flight slots for this client for good."""
        log.debug("no handler for message on %s", message.topic)
        if self._manual_ack and message.qos > 0:
            client.ack(message.mid, message.qos)


class _Pending:
    """A published message until its PUBACK."""

    __slots__ = ("acked", "bus", "info", "on_ack")

    def __init__(self, bus: BusClient, info: mqtt.MQTTMessageInfo, on_ack: Callable[[int], None] | None):
        self.bus, self.info, self.on_ack = bus, info, on_ack
        self.acked: threading.Event | None = None

    def settle(self, _reason: Any) -> None:
        with self.bus._lock:
            self.bus._unacked.pop(self.info.mid, None)
            acked = self.acked
        if acked is not None:
            acked.set()
        if self.on_ack is not None:
            _call_safely(self.on_ack, self.info.mid)


def _no_ack() -> None:
    pass


def _dispatcher(handler: Handler):
    """Adapt handler to paho's per-filter on_message callback."""

    def on_message(client, userdata, message: mqtt.MQTTMessage) -> None:
        _call_safely(handler, message.topic, message.payload, bool(message.retain))

    return on_message
