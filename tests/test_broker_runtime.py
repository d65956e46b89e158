"""The broker runtime: generated mosquitto.conf, persistence, queue limits and the spb-broker CLI."""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import sys

import pytest

from broker import topics
from broker.runtime import free_port, mosquitto_config
from tests.helpers import REPO, Inbox, child_env, connected

pytestmark = pytest.mark.integration

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
        f"persistence_location {mosquitto.data_dir.resolve()}",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "max_inflight_messages 100",
        "log_dest stdout",
    ):
        assert line in lines
    # The reason for the limit sits in the comment block right above it.
    assert re.search(r"\n# [^\n]*default of 1000 [^\n]*\n(#[^\n]*\n)*max_queued_messages 1000000\n", config)

    mosquitto.stop()
    assert (mosquitto.data_dir / "mosquitto.db").is_file()


def test_restart_keeps_port_and_retained_messages(mosquitto, make_client):
    state = topics.meter("m1", "state")
    meter = connected(make_client(mosquitto.port, "m1"))
    assert meter.wait_acked(meter.publish(state, b"online", retain=True), 10)
    meter.close()
    port = mosquitto.port

    mosquitto.restart()

    assert mosquitto.port == port
    inbox = Inbox()
    observer = make_client(mosquitto.port, "observer")
    observer.subscribe(state, inbox)
    connected(observer)
    assert inbox.wait_count(1) == [(state, b"online", True)]


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


def read_line(stream, timeout: float = 15) -> str:
    readable, _, _ = select.select([stream], [], [], timeout)
    assert readable, f"no output within {timeout} s"
    return stream.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("embedded", [False, True], ids=["mosquitto", "embedded"])
def test_cli_runs_a_broker_until_signalled(embedded, signum, tmp_path, make_client):
    port = free_port()
    command = [sys.executable, "-m", "broker.cli", "run", "--port", str(port), "--data-dir", str(tmp_path)]
    cli = subprocess.Popen(
        command + (["--embedded"] if embedded else []),
        cwd=REPO, env=child_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
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
    finally:
        cli.kill()
        cli.wait()
        cli.stdout.close()
        cli.stderr.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize("embedded", [False, True], ids=["mosquitto", "embedded"])
def test_cli_fails_cleanly_when_the_port_is_taken(embedded, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        command = [sys.executable, "-m", "broker.cli", "run", "--port", str(port), "--data-dir", str(tmp_path)]
        result = subprocess.run(
            command + (["--embedded"] if embedded else []),
            cwd=REPO, env=child_env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "spb-broker: cannot start a broker:" in result.stderr
    assert str(port) in result.stderr
