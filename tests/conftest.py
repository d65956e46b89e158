"""Shared fixtures: a real Mosquitto per test, on a free port, with its data in tmp_path.

Every test that starts real processes (Mosquitto, spb-* commands, loop devices) lives under
tests/system/ and is marked `integration` here: `pytest -m "not integration"` is the fast
lane, and needs none of them. A test elsewhere that asks for a fixture starting processes
stops the collection, so the two lanes stay apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.client import BusClient
from broker.runtime import Mosquitto, find_mosquitto, free_port
from edge.meter import MeterNode
from tests.support.bus import Inbox, connected
from tests.support.meter import RunningMeter
from tests.support.procs import Procs
from tests.support.rootfs import session_wheel

# browser_page (a page in headless chromium) lives beside its helpers; the import of
# playwright waits until a test asks for it.
pytest_plugins = ("tests.support.browser",)

SYSTEM = Path(__file__).resolve().parent / "system"
# The fixtures that run processes: those below, and the browser's.
STARTS_PROCESSES = {"mosquitto", "run_meter", "procs", "wheel", "browser_page"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        if item.path.is_relative_to(SYSTEM):
            item.add_marker(pytest.mark.integration)
        elif set(getattr(item, "fixturenames", ())) & STARTS_PROCESSES:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(f"tests that start processes belong in tests/system/: {', '.join(misplaced)}")


@pytest.fixture
def mosquitto(tmp_path):
    """A running Mosquitto (see broker.runtime.mosquitto_config); stopped after the test."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    broker = Mosquitto()
    broker.start(free_port(), tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture
def make_client():
    """make_client(port, client_id, **options): a BusClient with test-sized backoff, closed after the test."""
    clients = []

    def make(port: int, client_id: str, **options) -> BusClient:
        options.setdefault("reconnect_min_delay", 0.05)
        options.setdefault("reconnect_max_delay", 0.5)
        client = BusClient("127.0.0.1", port, client_id, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def read_retained(make_client):
    """read_retained(port, topic, client_id): what a newly subscribed client receives first on
    topic, as (topic, payload, retained): the broker's retained message, if it kept one."""

    def read(port: int, topic: str, client_id: str = "latecomer") -> tuple[str, bytes, bool]:
        inbox = Inbox()
        client = make_client(port, client_id)
        client.subscribe(topic, inbox)
        connected(client)
        return inbox.wait_count(1)[0]

    return read


@pytest.fixture
def run_meter(mosquitto):
    """run_meter(identity, config, sense): a MeterNode on the test's Mosquitto, running on a
    thread (its RunningMeter: .node, .stop()); stopped at the end of the test."""
    running: list[RunningMeter] = []

    def start(identity, config, sense) -> RunningMeter:
        node = MeterNode(identity, config, "127.0.0.1", mosquitto.port, sense=sense, reconnect_max_s=0.5)
        running.append(RunningMeter(node))
        return running[-1]

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


@pytest.fixture
def procs(tmp_path):
    """The test's child processes (tests.support.procs.Procs), logging under tmp_path/logs;
    any still running are killed after the test, whatever happened in it."""
    running = Procs(tmp_path / "logs")
    yield running
    running.kill_all()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """This project's wheel (flash-meter and server tests), built once per session."""
    return session_wheel(tmp_path_factory)
