"""A TCP proxy on loopback that the chaos run puts between one client and Mosquitto, to break
the network under it: delay, partition, cut.

This machine's kernel has no netem qdisc and no iptables, so network faults are made in
userspace: each client that gets network faults connects to its own FaultProxy instead of the
broker, and the proxy forwards raw bytes both ways. TLS stays end to end: the proxy never
looks into the bytes, and since it listens on 127.0.0.1 like the broker, the client still
checks the broker's certificate for the name 127.0.0.1.

- delay(ms): every chunk read from either side is written on `ms` later (order kept), so a
  round trip takes at least 2 x ms more.
- partition(on): bytes stop moving both ways (held, not dropped: TCP would retransmit them),
  connections stay open; new connections are accepted but stall too. Long enough and the
  keepalives time out and the peers close; short, and the client just stalls.
- cut(): every open connection is closed at once (the client reconnects through the proxy).

It listens on 127.0.0.1 only: a fault tool must never open a port to the network. Threads,
not asyncio: the run is threads and processes, and a pump per direction is simple to stop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque

HOST = "127.0.0.1"  # never any other address
CHUNK = 65536
TICK_S = 0.02  # how often a stalled pump looks at the faults again


class FaultProxy:
    """127.0.0.1:port -> 127.0.0.1:upstream_port, with faults switched from any thread."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay_ms = 0
        self.partitioned = False
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def delay(self, ms: int) -> None:
        self.delay_ms = ms

    def partition(self, on: bool) -> None:
        self.partitioned = on

    def cut(self) -> int:
        """Close every open connection; how many there were (pairs: client and upstream side)."""
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            _close(s)
        return len(socks) // 2

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                upstream = socket.create_connection((HOST, self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:  # the broker is away (a restart): the client sees a closed connection
                _close(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Read src, write dst each chunk once its delay is over and no partition holds it.

        A reader thread queues chunks with their release time so that reading goes on
        during a delay (the delay is added latency, not less bandwidth)."""
        queue: deque[tuple[float, bytes]] = deque()
        more = threading.Condition()
        done = threading.Event()

        def read() -> None:
            try:
                while chunk := src.recv(CHUNK):
                    with more:
                        queue.append((time.monotonic() + self.delay_ms / 1000, chunk))
                        more.notify()
            except OSError:
                pass
            with more:
                done.set()
                more.notify()

        threading.Thread(target=read, daemon=True).start()
        try:
            while True:
                with more:
                    while not queue and not done.is_set():
                        more.wait()
                    if not queue:
                        break  # src closed and everything it sent was written
                    release, chunk = queue[0]
                wait = release - time.monotonic()
                if wait > 0 or self.partitioned:
                    time.sleep(min(max(wait, 0), TICK_S) or TICK_S)
                    continue
                with more:
                    queue.popleft()
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with self._lock:
                self._open.discard(s)
            _close(s)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
