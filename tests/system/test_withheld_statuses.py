"""A proposer that announces its blocks on spb/v1/ledger/blocks but withholds their statuses
and rejects (issue 17, decision 0015): the stand-ins read a sample of the statuses back from
the broker, find them missing, and publish them. Four validators in threads of this
process (one with its publishing patched), over a real Mosquitto."""

from __future__ import annotations

from tests.support.consensus import Validators, stood_in_for
from wire import topics


def test_a_proposer_that_announces_its_blocks_without_their_statuses_is_stood_in_for(tmp_path, mosquitto, make_client):
    v = Validators(tmp_path, mosquitto.port, make_client, 40)
    # Validator 0 drops its own blocks' rows (rank 0) but the block itself: it announces them.
    with stood_in_for(v, keep=lambda row: row.rank > 0 or row.topic == topics.LEDGER_BLOCKS) as signers_by_height:
        # Heights 4, 8, ... are validator 0's at round 0: their statuses came from stand-ins.
        assert any(h % 4 == 0 for h in signers_by_height), "validator 0 proposed no block: the test proved nothing"
        assert all(0 not in signers for signers in signers_by_height.values()), "the liar published a status"
