"""deploy.fault_proxy on real sockets: bytes forwarded both ways, delay, partition, cut.

No upper bounds on time: a delay is checked as "at least", a partition as "nothing moved
while it held" (true on any machine), and waits are on conditions with generous timeouts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from deploy.fault_proxy import HOST, FaultProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on loopback: its port."""
    server = socket.create_server((HOST, 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    p = FaultProxy(echo)
    yield p
    p.close()


def dial(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection((HOST, proxy.port), timeout=10)
    return s


def read_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, f"closed after {len(got)} of {n} bytes"
        got += chunk
    return got


def test_it_listens_on_loopback_only(proxy):
    assert proxy._listener.getsockname()[0] == "127.0.0.1"


def test_bytes_go_both_ways_in_order(proxy):
    payload = bytes(range(256)) * 1000  # 256 kB: several chunks
    with dial(proxy) as s:
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        assert read_exactly(s, len(payload)) == payload


def test_a_delay_adds_at_least_its_latency_each_way(proxy):
    with dial(proxy) as s:
        s.sendall(b"warm")
        assert read_exactly(s, 4) == b"warm"
        proxy.delay(150)
        start = time.monotonic()
        s.sendall(b"slow")
        assert read_exactly(s, 4) == b"slow"
        assert time.monotonic() - start >= 2 * 0.150  # out and back, each delayed
        proxy.delay(0)
        s.sendall(b"fast")
        assert read_exactly(s, 4) == b"fast"


def test_a_partition_holds_bytes_without_closing_then_lets_them_through(proxy):
    with dial(proxy) as s:
        s.sendall(b"before")
        assert read_exactly(s, 6) == b"before"
        proxy.partition(True)
        s.sendall(b"during")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):  # nothing moves, and the connection stays open
            s.recv(6)
        s.settimeout(10)
        proxy.partition(False)
        assert read_exactly(s, 6) == b"during"


def test_a_cut_closes_open_connections_and_new_ones_work(proxy):
    with dial(proxy) as s:
        s.sendall(b"x")
        assert read_exactly(s, 1) == b"x"
        assert proxy.cut() == 1
        assert s.recv(1) == b""  # closed by the proxy
    with dial(proxy) as again:
        again.sendall(b"y")
        assert read_exactly(again, 1) == b"y"
    assert proxy.connections == 2


def test_an_upstream_that_is_away_closes_the_client(echo):
    p = FaultProxy(echo)
    gone = socket.create_server((HOST, 0))
    p.upstream_port = gone.getsockname()[1]
    gone.close()  # nobody listens there: like a broker during its restart
    try:
        with dial(p) as s:
            assert s.recv(1) == b""
    finally:
        p.close()
