"""A proposer that announces its blocks on spb/v1/ledger/blocks but withholds their statuses
and rejects (issue 17, decision 0015): the stand-ins read a sample of the statuses back from
the broker, find them missing, and publish them. Four validators in threads of this
process (one with its publishing patched), over a real Mosquitto."""

from __future__ import annotations

import threading

from ledger.service import LedgerService
from ledger.validator import ValidatorIdentity
from tests.support.bus import wait_for
from tests.support.consensus import Validators
from wire import topics
from wire.messages import open_message


def test_a_proposer_that_announces_its_blocks_without_their_statuses_is_stood_in_for(tmp_path, mosquitto, make_client):
    v = Validators(tmp_path, mosquitto.port, make_client, 40)
    services = [LedgerService(ValidatorIdentity.load(v.root, i), "127.0.0.1", mosquitto.port) for i in range(4)]
    liar = services[0]
    # Its own blocks' rows (rank 0) are dropped but the block itself: it announces them.
    liar._queue = lambda rows, late=False, queue=liar._queue: queue(
        [r for r in rows if r.rank > 0 or r.topic == topics.LEDGER_BLOCKS], late
    )
    threads = [threading.Thread(target=s.run, daemon=True) for s in services]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: (
                {t for t, p, _ in v.inbox.messages if p.startswith(b"online")}
                >= {topics.ledger_state(i) for i in range(4)}
            ),
            30,
            "four validators online",
        )
        for wave in range(8):  # waves of trades, so that heights go round the rotation
            v.publish(v.trades[5 * wave : 5 * wave + 5])
            v.wait_settled(5 * wave + 5, timeout=60)
        validators = v.genesis().validators
        signers_by_height: dict[int, set[int]] = {}
        for t, p, _ in v.inbox.messages:
            if t.startswith("spb/v1/status/"):
                opened = open_message(p, "status")
                signers = {i for i, key in enumerate(validators) if opened.envelope.verifies(key)}
                signers_by_height.setdefault(opened.body.h, set()).update(signers)
        # Heights 4, 8, ... are validator 0's at round 0: their statuses came from stand-ins.
        assert any(h % 4 == 0 for h in signers_by_height), "validator 0 proposed no block: the test proved nothing"
        assert all(0 not in signers for signers in signers_by_height.values()), "the liar published a status"
    finally:
        for s in services:
            s.stop()
        for t in threads:
            t.join(15)
