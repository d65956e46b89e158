"""Shared material for ledger tests: a ledger dir for a simulated community, a ledger
service on a real broker, and decoding what it publishes."""

from __future__ import annotations

import threading
from pathlib import Path

from broker import topics
from broker.messages import Rejection, Status, open_message
from deploy.simulate import SimCommunity
from ledger.genesis import write_genesis
from ledger.service import LedgerService
from ledger.validator import ValidatorIdentity, validator_dir
from tests.helpers import Inbox, wait_for

NOW = 1_800_000_000_000  # a fixed clock for pure tests: 2027-01-15


def ledger_dir(root: Path, community: SimCommunity, balance: int = 1_000, block_ms: int = 50) -> Path:
    """A ledger dir (genesis + validator 0's key) whose accounts are the community's households."""
    write_genesis(root, community.genesis(balance, block_ms=block_ms))
    home = validator_dir(root, 0)
    home.mkdir(parents=True, exist_ok=True)
    (home / "validator.key").write_text(bytes(community.validator_keys[0]).hex() + "\n")
    (home / "validator.key").chmod(0o600)
    return root


class RunningLedger:
    """A LedgerService on its own thread, as `spb-ledger run` runs it; stop() joins it."""

    def __init__(self, root: Path, port: int, **options):
        self.service = LedgerService(ValidatorIdentity.load(root, 0), "127.0.0.1", port, **options)
        self.thread = threading.Thread(target=self.service.run, name="ledger", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the ledger did not stop"


def statuses(inbox: Inbox) -> list[Status]:
    """Every status in an inbox subscribed to spb/v1/status/+, in arrival order."""
    return [open_message(p, "status").body for t, p, _ in inbox.messages if t.startswith(f"{topics.ROOT}/status/")]


def rejections(inbox: Inbox) -> list[Rejection]:
    return [open_message(p, "reject").body for t, p, _ in inbox.messages if t == topics.REJECTS]


def wait_status(inbox: Inbox, ctp_id: bytes, state: str, timeout: float = 10) -> Status:
    """The first status of `ctp_id` in `state`, once it has arrived."""
    def found():
        return next((s for s in statuses(inbox) if s.ctp == ctp_id and s.state == state), None)
    return wait_for(found, timeout, lambda: f"{state} for {ctp_id.hex()}; saw {[(s.ctp.hex()[:8], s.state) for s in statuses(inbox)]}")


def wait_reject(inbox: Inbox, msg_hash: bytes, timeout: float = 10) -> Rejection:
    def found():
        return next((r for r in rejections(inbox) if r.msg == msg_hash), None)
    return wait_for(found, timeout, lambda: f"a reject of {msg_hash.hex()[:16]}; saw {[(r.msg.hex()[:8], r.reason) for r in rejections(inbox)]}")


class Chain:
    """A validator's database built block by block in-process, as the service builds it."""

    def __init__(self, root: Path, community: SimCommunity, balance: int = 1_000):
        from broker.verify import Verifier
        from ledger.store import LedgerStore
        from ledger.validator import ValidatorIdentity

        ledger_dir(root, community, balance)
        self.identity = ValidatorIdentity.load(root, 0)
        self.store = LedgerStore(self.identity.db_path, self.identity.genesis)
        self.state = self.store.load()
        self.verifier = Verifier(self.identity.genesis.cas, self.identity.genesis.validators)

    def block(self, t: int, *messages: tuple[str, bytes]) -> list[str | None]:
        """Decide `messages` ((typ, raw) pairs) in one block at time t; their reject reasons."""
        from ledger.draft import Draft

        draft = Draft(self.state, self.verifier, t)
        reasons = [draft.add(typ, raw) for typ, raw in messages]
        block = draft.finish()
        key = self.identity.key
        if block is not None:
            block = block.sealed(0, key)
        self.store.commit(draft, block, draft.signed_outputs(key), [])
        if block is not None:
            self.state.commit(draft)
        return reasons
