"""Waiting helpers for tests: wait on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from broker.client import BusClient

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """Environment for a Python child process that imports this repo's packages."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_module(module: str, *args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` of this repo to its end, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def connected(client: BusClient, timeout: float = 10) -> BusClient:
    """client, connected and ready (subscriptions granted, on_connect hooks run)."""
    client.connect()
    assert client.wait_connected(timeout), f"{client.client_id} did not connect within {timeout} s"
    return client


def read_line(stream, timeout: float = 15) -> str:
    """The next line a child process writes to a text pipe, failing if none comes within timeout s."""
    readable, _, _ = select.select([stream], [], [], timeout)
    assert readable, f"no output within {timeout} s"
    return stream.readline()


def wait_for(
    predicate: Callable[[], T], timeout: float = 10, message: str | Callable[[], str] = "", interval: float = 0.01
) -> T:
    """Poll predicate until it returns something truthy and return that; AssertionError after timeout s.

    message says what was awaited (a callable is asked at the deadline, to show the state
    then). The sleep here is only the polling interval: the wait ends as soon as the condition
    holds, however long the system under test takes (up to the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            description = message() if callable(message) else message or predicate
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        time.sleep(interval)


class Inbox:
    """A BusClient handler that records (topic, payload, retained) for tests to wait on."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload, retained))

    def payloads(self) -> list[bytes]:
        return [payload for _, payload, _ in self.messages]

    def wait_count(self, count: int, timeout: float = 10) -> list[tuple[str, bytes, bool]]:
        """The first `count` messages, once that many have arrived."""
        wait_for(
            lambda: len(self.messages) >= count,
            timeout,
            lambda: f"{count} messages; got {len(self.messages)}: {self.payloads()[:10]}",
        )
        return self.messages[:count]
