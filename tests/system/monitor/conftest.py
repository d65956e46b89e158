"""One street for every monitoring test: six households trading by themselves on a real
Mosquitto (TLS and ACL, plus its read-only loopback listener) with four validators
(tests.support.street), started once for this package and stopped after its last test, so
the mirror, the exporter and the dashboard are each checked against the same running
community without paying for its start three times.

A test starts its own `spb-monitor` process (`monitor_process`) and waits on what it needs
(a settled trade, a cleared interval); the street keeps trading meanwhile.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator

import pytest

from broker.runtime import find_mosquitto, free_port
from tests.support.bus import wait_for
from tests.support.street import STREET, VALIDATORS, Street

# Monitor processes are numbered across the package: each has its own log, so a test waiting
# for `ready` cannot read the line an earlier test's process wrote.
_numbers = itertools.count()


@pytest.fixture(scope="package")
def street(tmp_path_factory) -> Iterator[Street]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    s = Street(tmp_path_factory.mktemp("monitored"), local_port=free_port())
    try:
        mark = len(s.inbox.messages)
        for i in range(VALIDATORS):
            s.start_validator(i)
        for h in STREET:
            s.start_meter(h)
        s.wait_online(mark)
        yield s
    finally:
        s.close()


@pytest.fixture(scope="package")
def local_url(street: Street) -> str:
    """The broker's anonymous read-only listener, as spb-monitor --broker takes it."""
    assert street.broker.local_port is not None, "the street's broker has a loopback listener"
    return f"mqtt://127.0.0.1:{street.broker.local_port}"


@pytest.fixture
def monitor_process(street: Street):
    """monitor_process(command, *args, ready=prefix): `spb-monitor COMMAND DIR ...args` under the
    street's Procs; with `ready`, waits for the stdout line starting with it and returns
    (process, that line). The process is stopped (SIGTERM, exit 0 expected) after the test."""
    started: list[subprocess.Popen] = []

    def start(command: str, *args: object, ready: str | None = None):
        name = f"monitor-{command}-{next(_numbers)}"
        proc = street.procs.start(name, "monitor.cli", command, street.root, *args)
        started.append(proc)
        if ready is None:
            return proc, ""
        log = street.procs.log_dir / f"{name}.log"
        line = wait_for(
            lambda: next((ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(ready)), None),
            30,
            lambda: f"spb-monitor {command} to say {ready!r}{street.procs.logs()}",
            interval=0.1,
        )
        return proc, line

    yield start
    for proc in started:
        street.procs.stop(proc)
        assert proc.returncode == 0, street.procs.logs()
