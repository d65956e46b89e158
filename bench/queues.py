"""Subscribers that never read (issue 17, item 2): what they cost Mosquitto, and a reader.

The issue's trial: 500 subscribers that never read, then 2,000 messages, took Mosquitto
from 9 MB to 312 MB and slowed the burst 16x. Here, on a real Mosquitto with our
configuration (broker.runtime.common_settings) or with other queue settings:

- `stuck`: 500 persistent sessions (clean session off, QoS 1 on the burst's topic) that
  stay connected and never read, on sockets with a small receive buffer, so what the
  broker sends them piles up in the broker, not in the kernel;
- `offline`: 500 persistent sessions that subscribed and disconnected (a meter away): the
  broker queues for them, up to max_queued_messages / max_queued_bytes each;
- `none`: no such subscriber, the bound the others are measured against.

Then one publisher sends 2,000 signed readings (QoS 1) while one subscriber reads them.
Reported per case: Mosquitto's RSS before the subscribers, after them, at its peak and
after the burst; the burst's time from the first publish to the reader's 2,000th message
(beside the `none` case's, measured in the same run); and how many messages the broker
counted as dropped ($SYS/broker/publish/messages/dropped), which is what a bound costs.
Run: `python -m bench.queues [--subscribers N] [--messages N] [--settings today,bounded]
[--cases none,stuck,offline]`.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nacl.signing import SigningKey

from bench.flood import rss
from broker.client import BusClient
from broker.runtime import MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES, Mosquitto, free_port, mosquitto_config
from wire import topics
from wire.messages import Reading

TOPIC = topics.meter("m-bench", "reading")
SETTINGS = {  # name -> (max_queued_messages, max_queued_bytes)
    "today": (1_000_000, 0),  # before issue 17
    "bounded": (MAX_QUEUED_MESSAGES, MAX_QUEUED_BYTES),  # broker.runtime's
}
SYS_INTERVAL_S = 1  # how often the broker updates $SYS here (default 10 s)
RCVBUF = 4096  # a stuck subscriber's receive buffer, bytes (the kernel may double it)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def raw_subscriber(port: int, client_id: str, stay: bool) -> socket.socket | None:
    """A persistent MQTT 3.1.1 session subscribed at QoS 1 to TOPIC, by hand, so that it
    reads nothing after its SUBACK: the socket if it stays connected, else None."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.connect(("127.0.0.1", port))
    # CONNECT: protocol level 4, clean session off, keepalive 0 (never timed out: the worst case).
    sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0]) + (0).to_bytes(2, "big") + _string(client_id)))
    _read_exactly(sock, 4)  # CONNACK
    sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + _string(TOPIC) + bytes([1])))
    _read_exactly(sock, 5)  # SUBACK
    if stay:
        return sock
    sock.sendall(_packet(0xE0, b""))
    sock.close()
    return None


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


class Peak:
    """The highest RSS of a process, sampled every 20 ms while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.done = pid, rss(pid), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, rss(self.pid))


class Counting:
    """A BusClient handler that counts and signals once `target` messages arrived."""

    def __init__(self, target: int) -> None:
        self.target, self.count, self.done = target, 0, threading.Event()

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


class Dropped:
    """$SYS/broker/publish/messages/dropped as the broker last published it (every
    sys_interval, 1 s here, and only when it changed; absent while nothing was dropped)."""

    def __init__(self, port: int) -> None:
        self.value = 0
        self.client = BusClient("127.0.0.1", port, "sys-watcher", clean_session=True)
        self.client.subscribe("$SYS/broker/publish/messages/dropped", self._on)
        self.client.connect()

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        self.value = int(payload)

    def settled(self) -> int:
        """The count once two updates of the $SYS tree have passed since the caller's burst."""
        time.sleep(2 * SYS_INTERVAL_S + 0.5)
        self.client.close()
        return self.value


def case(settings: tuple[int, int], subscribers: str, count: int, messages: int, payload: bytes) -> dict:
    messages_limit, bytes_limit = settings

    def render(port: int, data_dir: Path) -> str:
        config = mosquitto_config(port, data_dir)
        config = config.replace(f"max_queued_messages {MAX_QUEUED_MESSAGES}", f"max_queued_messages {messages_limit}")
        config = config.replace(f"max_queued_bytes {MAX_QUEUED_BYTES}", f"max_queued_bytes {bytes_limit}")
        return config + f"sys_interval {SYS_INTERVAL_S}\n"

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(render=render) as broker:
        broker.start(free_port(), Path(tmp) / "mosquitto")
        assert broker.pid is not None
        before = rss(broker.pid)
        socks = (
            []
            if subscribers == "none"
            else [raw_subscriber(broker.port or 0, f"q{i}", subscribers == "stuck") for i in range(count)]
        )
        subscribed = rss(broker.pid)
        counting = Counting(messages)
        reader = BusClient("127.0.0.1", broker.port or 0, "reader")
        reader.subscribe(TOPIC, counting)
        reader.connect()
        publisher = BusClient("127.0.0.1", broker.port or 0, "publisher", max_inflight=0)
        publisher.connect()
        lost = Dropped(broker.port or 0)
        assert reader.wait_connected(10) and publisher.wait_connected(10) and lost.client.wait_connected(10)
        peak = Peak(broker.pid)
        started = time.monotonic()
        for _ in range(messages):
            publisher.publish(TOPIC, payload)
        delivered = counting.done.wait(300)
        burst_s = time.monotonic() - started
        top = peak.stop()
        after = rss(broker.pid)
        dropped = lost.settled()
        for client in (reader, publisher):
            client.close()
        for sock in socks:
            if sock is not None:
                sock.close()
    return {
        "before": before,
        "subscribed": subscribed,
        "peak": top,
        "after": after,
        "burst_s": burst_s if delivered else None,
        "dropped": dropped,
    }


def main(argv: list[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--settings", default="today,bounded", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--cases", default="none,stuck,offline", help="of none, stuck, offline")
    args = parser.parse_args(argv)
    names, cases = args.settings.split(","), args.cases.split(",")
    if any(name not in SETTINGS for name in names) or not set(cases) <= {"none", "stuck", "offline"}:
        parser.error(f"settings are {', '.join(SETTINGS)}; cases none, stuck, offline")
    if args.subscribers < 1 or args.messages < 1:
        parser.error("sizes must be positive")
    key = SigningKey(b"\x01" * 32)
    payload = Reading(meter="m-bench", seq=1, t=1_800_000_000_000, wh_in=123_456, wh_out=7_890, w=1500).sign(key)
    out(
        f"{args.subscribers} subscribers that never read, then {args.messages} readings of {len(payload)} B "
        "(QoS 1) to one that reads; Mosquitto RSS in MiB"
    )
    out(f"{'settings':24} {'case':8} {'before':>6} {'subscr':>6} {'peak':>6} {'after':>6} {'burst s':>8} dropped")
    bound = None
    for name in names:
        for subscribers in cases:
            r = case(SETTINGS[name], subscribers, args.subscribers, args.messages, payload)
            burst = "never" if r["burst_s"] is None else f"{r['burst_s']:.3f}"
            if subscribers == "none":
                bound = r["burst_s"]
            slower = "" if bound is None or r["burst_s"] is None else f" ({r['burst_s'] / bound:.1f}x)"
            label = f"{name} {SETTINGS[name][0]}/{SETTINGS[name][1]}"
            mib = [f"{r[k] / 2**20:6.1f}" for k in ("before", "subscribed", "peak", "after")]
            out(f"{label:24} {subscribers:8} {' '.join(mib)} {burst:>8}{slower} {r['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
