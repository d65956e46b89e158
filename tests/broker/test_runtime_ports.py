"""broker.runtime.free_port: a free port below the OS's ephemeral range, so a client that
reconnects while nothing listens there can never be given it as its own source port."""

from __future__ import annotations

import socket

from broker.runtime import LOWEST_PICKED_PORT, ephemeral_ports, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range():
    below = ephemeral_ports().start
    for _ in range(50):
        port = free_port()
        assert LOWEST_PICKED_PORT <= port < below
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nothing holds it


def test_a_taken_port_is_skipped(monkeypatch):
    import broker.runtime as runtime

    held, other = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", held))
        taken.listen()
        picks = iter([held, held, other])
        monkeypatch.setattr(runtime.random, "randrange", lambda *_: next(picks))
        assert held != other and free_port() == other


def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults(tmp_path, monkeypatch):
    import broker.runtime as runtime

    (tmp_path / "range").write_text("40000\t50000\n")
    monkeypatch.setattr(runtime, "EPHEMERAL_RANGE", tmp_path / "range")
    assert ephemeral_ports() == range(40000, 50001)
    monkeypatch.setattr(runtime, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert ephemeral_ports() == range(32768, 61000)
