"""The broker runtime: generated mosquitto.conf, persistence, queue limits and the spb-broker CLI."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.runtime import (
    LOG_NAME,
    MAX_INFLIGHT,
    MAX_QUEUED_BYTES,
    MAX_QUEUED_MESSAGES,
    MESSAGE_SIZE_LIMIT,
    EmbeddedBroker,
    free_port,
    mosquitto_config,
)
from tests.support.bus import REPO, Inbox, child_env, connected, read_line, wait_for
from wire import topics

TEST_TOPIC = f"{topics.ROOT}/test"
BURST = 5000


def test_generated_config_is_what_mosquitto_runs(mosquitto):
    config = mosquitto.config_path.read_text()
    assert config == mosquitto_config(mosquitto.port, mosquitto.data_dir)
    lines = config.splitlines()
    for line in (
        f"listener {mosquitto.port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {mosquitto.data_dir.resolve()}/",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"max_inflight_messages {MAX_INFLIGHT}",
        f"max_packet_size {MESSAGE_SIZE_LIMIT}",
        f"log_dest file {mosquitto.data_dir.resolve() / LOG_NAME}",
    ):
        assert line in lines
    # The reason for the limit sits in the comment block right above it.
    assert re.search(
        r"\n# [^\n]*\$SYS/broker/publish/messages/dropped[^\n]*\n(#[^\n]*\n)*max_queued_messages \d+\n", config
    )

    mosquitto.stop()
    assert (mosquitto.data_dir / "mosquitto.db").is_file()


def test_restart_keeps_port_and_retained_messages(mosquitto, make_client, read_retained):
    state = topics.meter("m1", "state")
    meter = connected(make_client(mosquitto.port, "m1"))
    assert meter.wait_acked(meter.publish(state, b"online", retain=True), 10)
    meter.close()
    port = mosquitto.port

    mosquitto.restart()

    assert mosquitto.port == port
    assert read_retained(mosquitto.port, state) == (state, b"online", True)


def test_burst_for_an_offline_persistent_subscriber_is_delivered_completely(mosquitto, make_client):
    ledger = make_client(mosquitto.port, "ledger")
    ledger.subscribe(TEST_TOPIC, Inbox())
    connected(ledger).close()  # the persistent session, and its subscription, stay at the broker

    meter = connected(make_client(mosquitto.port, "m1"))
    sent = [meter.publish(TEST_TOPIC, b"%d" % n) for n in range(BURST)]
    assert all(meter.wait_acked(info, 10) for info in sent)

    inbox = Inbox()
    ledger_again = make_client(mosquitto.port, "ledger")
    ledger_again.subscribe(TEST_TOPIC, inbox)
    ledger_again.connect()
    inbox.wait_count(BURST, timeout=30)
    assert sorted(int(payload) for payload in inbox.payloads()) == list(range(BURST))


def test_embedded_broker_whose_loop_died_is_not_running_and_stops_at_once(tmp_path):
    """spb-broker polls running() to notice a dead broker, and stops it on its way out."""
    broker = EmbeddedBroker()
    broker.start(free_port(), tmp_path)
    assert broker.running()
    # Nothing public ends the loop; only a bug (an exception escaping run_forever) would.
    broker._loop.call_soon_threadsafe(broker._loop.stop)
    wait_for(lambda: not broker.running(), message="the broker's loop thread to end")

    broker.stop()  # would wait STOP_TIMEOUT s for a shutdown the dead loop never runs, then raise

    assert not broker.running()


def cli_command(port: int, data_dir: Path, embedded: bool) -> list[str]:
    command = [sys.executable, "-m", "broker.cli", "run", "--port", str(port), "--data-dir", str(data_dir)]
    return command + (["--embedded"] if embedded else [])


@contextlib.contextmanager
def cli_broker(port: int, data_dir: Path, embedded: bool = False):
    """`spb-broker run` as a child process with text pipes for stdout and stderr, killed if still running at the end."""
    with subprocess.Popen(
        cli_command(port, data_dir, embedded),
        cwd=REPO,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        try:
            yield cli
        finally:
            cli.kill()


def children(pid: int) -> list[int]:
    """The process ids of pid's children, from Linux's /proc/PID/task/TID/children."""
    return [int(child) for tasks in Path(f"/proc/{pid}/task").glob("*/children") for child in tasks.read_text().split()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("embedded", [False, True], ids=["mosquitto", "embedded"])
def test_cli_runs_a_broker_until_signalled(embedded, signum, tmp_path, make_client):
    port = free_port()
    with cli_broker(port, tmp_path, embedded) as cli:
        kind = "embedded" if embedded else "mosquitto"
        assert read_line(cli.stdout) == f"spb-broker: {kind} listening on mqtt://127.0.0.1:{port}\n"

        inbox = Inbox()
        subscriber = make_client(port, "sub")
        subscriber.subscribe(TEST_TOPIC, inbox)
        connected(subscriber)
        connected(make_client(port, "pub")).publish(TEST_TOPIC, b"through the cli broker")
        assert inbox.wait_count(1) == [(TEST_TOPIC, b"through the cli broker", False)]

        cli.send_signal(signum)
        assert cli.wait(15) == 0, cli.stderr.read()
        assert cli.stdout.read() == ""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_cli_exits_when_mosquitto_dies(tmp_path, make_client):
    """Otherwise spb-broker would go on claiming to serve the bus with nothing listening."""
    port = free_port()
    with cli_broker(port, tmp_path) as cli:
        assert read_line(cli.stdout) == f"spb-broker: mosquitto listening on mqtt://127.0.0.1:{port}\n"
        connected(make_client(port, "bystander"))  # mosquitto logs it: the last line before the kill
        (mosquitto_pid,) = children(cli.pid)

        os.kill(mosquitto_pid, signal.SIGKILL)

        assert cli.wait(30) == 1  # it notices within WATCH_INTERVAL; the margin is for a loaded machine
        stderr = cli.stderr.read()
    assert re.fullmatch(
        r"spb-broker: mosquitto exited unexpectedly \(killed by SIGKILL; "
        r"last log line: \d+: New client connected from \S+ as bystander \(.*\)\.\)\n",
        stderr,
    ), stderr


@pytest.mark.parametrize("embedded", [False, True], ids=["mosquitto", "embedded"])
def test_cli_fails_cleanly_when_the_port_is_taken(embedded, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        result = subprocess.run(
            cli_command(port, tmp_path, embedded),
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "spb-broker: cannot start a broker:" in result.stderr
    assert str(port) in result.stderr
