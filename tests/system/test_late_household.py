"""A household added after 100 blocks trades (issue 18), every part a real process on
loopback: Mosquitto with the community's TLS and ACL, `spb-ledger run`, two `spb-meter run`
on fake ADCs. The ledger runs past block 100 on the operator's funds, a fourth household
joins with `spb-deploy provision --meters 4 --broker`, the operator funds it, and its meter
buys energy from a seller of the genesis with a CTP: a CoE witnessed by that seller's meter,
an ERC once the energy came, settled against the seller's proved export."""

from __future__ import annotations

from broker.client import TlsFiles
from broker.clock import wall_ms
from broker.keys import load_key
from ledger.genesis import read_genesis
from ledger.operator import operator_key_path, resolve_account
from tests.support.bus import connected, wait_for
from tests.support.bus import run_module as command
from tests.support.community import running_community, watching
from wire import topics
from wire.messages import AccountStatus, CtpState, Fund, Status

UNITS = 1_000
BLOCKS = 100
PRICE_WH = 5


def test_a_household_added_after_100_blocks_buys_energy(tmp_path, procs, make_client):
    with running_community(tmp_path, procs, UNITS) as (root, port, url):
        _grow_and_trade(root, port, url, procs, make_client)


def _grow_and_trade(root, port, url, procs, make_client) -> None:
    genesis = read_genesis(root)
    verifier = genesis.verifier()
    inbox = watching(root, port, make_client, procs)

    def height(account: bytes) -> int:
        """The newest block that changed the account, by its verified statuses seen so far."""
        statuses = [
            verifier.verify(p, wall_ms(), expect=AccountStatus).body
            for t, p, _ in list(inbox.messages)
            if t == topics.account(account)
        ]
        return max((s.h for s in statuses), default=0)

    # 100 blocks first: the operator funds the seller one unit at a time, each its own block.
    operator = make_client(port, "operator", clean_session=True, tls=TlsFiles.in_dir(root / "operator"))
    connected(operator)
    key, seller = load_key(operator_key_path(root)), resolve_account(root, "m0001")
    for i in range(BLOCKS):
        before = height(seller)
        fund = Fund(op=bytes(key.verify_key), account=seller, amount=1, ref=f"warm-{i}", t=wall_ms())
        operator.publish(topics.TX_FUND, fund.sign(key))
        wait_for(lambda b=before: height(seller) > b, 20, lambda i=i: f"fund {i} in a block{procs.logs()}")
    assert height(seller) >= BLOCKS  # one block per fund: the ledger has no other work
    operator.close()

    # A fourth household joins the running community and is funded.
    grown = command("deploy.cli", "provision", root, "--meters", "4", "--broker", url, "--timeout", "60")
    assert grown.returncode == 0, grown.stdout + grown.stderr + procs.logs()
    buyer = resolve_account(root, "m0004")
    funded = command("ledger.cli", "fund", root, "m0004", 500, "--ref", "bank-1", "--broker", url)
    assert funded.returncode == 0 and "balance 500 held 0" in funded.stdout, funded.stdout + funded.stderr
    assert height(buyer) > BLOCKS

    # Its meter buys from the seller's: a CoE witnessed by m0001, energy imported, an ERC.
    meter_args = ["--broker", url, "--adc", "fake", "--reading-s", "1", "--resend-s", "1"]
    procs.start("m0001", "edge.cli", "run", "--state-dir", root / "meters/m0001", *meter_args, "--fake-w=-3000")
    procs.start("m0004", "edge.cli", "run", "--state-dir", root / "meters/m0004", *meter_args, "--fake-w=3000")
    wh = 2

    def ctp_queued() -> bool:
        """`spb-meter ctp`, refused until the meter's key batch has its CoE from m0001."""
        ctp = command("edge.cli", "ctp", root / "meters/m0004", seller.hex(), wh * PRICE_WH, wh, "--expiry", "120")
        assert ctp.returncode == 0 or "CoE" in ctp.stderr, ctp.stdout + ctp.stderr
        return ctp.returncode == 0

    wait_for(ctp_queued, 60, lambda: f"m0004's key batch witnessed{procs.logs()}")

    def settled() -> list[Status]:
        found = []
        for t, p, _ in list(inbox.messages):
            if t.startswith(topics.STATUS_ALL[:-1]):
                status = verifier.verify(p, wall_ms(), expect=Status).body
                if status.payer == buyer and status.state == CtpState.SETTLED:
                    found.append(status)
        return found

    wait_for(settled, 180, lambda: f"the new household's CTP settled{procs.logs()}")
    [status] = settled()
    assert status.payee == seller and status.wh == wh and status.h > BLOCKS
    for proc in procs.procs:
        procs.stop(proc)
    audited = command("ledger.cli", "audit", root)
    assert audited.returncode == 0, audited.stdout + audited.stderr
