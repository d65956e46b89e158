"""What both of `spb-deploy demo`'s runs need around their processes: the broker, stopping, the audit."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.runtime import Broker, find_mosquitto, free_port, start_broker, wait_or_kill
from broker.secure import start_secure
from ledger.audit import AuditFailure, audit
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity


def start_community_broker(root: Path, port: int, embedded: bool) -> tuple[Broker, str]:
    """Mosquitto with the community's TLS config and ACL, plain `port` a read-only loopback
    listener; with `embedded` (or no Mosquitto) the embedded broker, open and plain on `port`.

    Returns the broker and the URL meters and the ledger connect to.
    """
    if embedded or find_mosquitto() is None:
        broker = start_broker(port, root / "broker" / "data", embedded=True)
        return broker, f"127.0.0.1:{port}"
    broker = start_secure(root / "broker", free_port(), local_port=port)
    return broker, broker.url


@contextmanager
def validator_store(root: Path, i: int) -> Iterator[LedgerStore]:
    """Validator i's database, read-only (also while it runs), closed after use."""
    identity = ValidatorIdentity.load(root, i, with_key=False)
    store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    try:
        yield store
    finally:
        store.close()


def audit_validators(root: Path, validators: int) -> str:
    """`spb-ledger audit` of every validator's database after the run, and whether their heads
    agree: 'ok ...' or why not."""
    heads = set()
    for i in range(validators):
        try:
            with validator_store(root, i) as store:
                report = audit(store)
                heads.add(store.head())
        except AuditFailure as exc:
            return f"v{i} failed at height {exc.height}: {exc.what}"
        except Exception as exc:  # the verdict, not a traceback: the demo is for people watching
            return f"v{i} failed: {exc}"
    if len(heads) != 1:
        return f"failed: the validators' heads differ: {sorted(h[0] for h in heads)}"
    return f"ok on {validators} validator(s), one head: height {report.height}, {report.trades} trades"


def stop_all(procs: list[tuple[subprocess.Popen, threading.Thread]]) -> list[int]:
    """SIGTERM every process at once (meters go offline cleanly), then wait for each (killed
    after 15 s) and its log reader: their exit codes, in order."""
    for proc, _ in procs:
        proc.send_signal(signal.SIGTERM)
    codes = []
    for proc, reader in procs:
        wait_or_kill(proc, 15)
        codes.append(proc.returncode)
        reader.join(timeout=5)
    return codes
