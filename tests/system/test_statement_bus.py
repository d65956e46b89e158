"""A household's statement over the bus (docs/PROTOCOL.md §10.4, decision 0017), with real
processes: four `spb-ledger run` validators on a real Mosquitto settle a load of trades,
then `spb-meter statement` (its own process, with only the meter's state dir) fetches the
household's statement from them, and it is the one `spb-ledger statement` reads from a
validator's database, whose closing balance is the ledger's."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.clock import wall_ms
from ledger.workload import SimCommunity, _key, pk
from tests.support.bus import run_module, wait_for
from tests.support.consensus import VALIDATORS, Validators
from tests.support.ledger import rejections
from tests.support.statement import BALANCE, operator_genesis, write_ledger_dir
from wire import topics
from wire.messages import Fund, Payout

OPERATOR = _key(b"statement bus", "operator")

TRADES = 24


def meter_dir(root: Path, community: SimCommunity, validators: tuple[bytes, ...], i: int) -> Path:
    """Household i's meter state dir as provisioning lays it out: what `spb-meter statement` reads."""
    h = community.households[i]
    root.mkdir(parents=True)
    (root / "device.key").write_text(bytes(h.device).hex() + "\n")
    (root / "account.key").write_text(bytes(h.account).hex() + "\n")
    (root / "devcert.cbor").write_bytes(h.devcert)
    meter_toml = [
        f'id = "{h.meter_id}"',
        f'ca_pk = "{pk(community.ca).hex()}"',
        f'account_pk = "{pk(h.account).hex()}"',
        "validators = [" + ", ".join(f'"{v.hex()}"' for v in validators) + "]",
    ]
    (root / "meter.toml").write_text("\n".join(meter_toml) + "\n")
    assert tomllib.loads((root / "meter.toml").read_text())["id"] == h.meter_id
    return root


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "")


def run(module: str, *args: object) -> str:
    done = run_module(module, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class OperatorValidators(Validators):
    """Four validators of a market chain with an operator (decision 0016), no trades."""

    def ledger_dir(self, root: Path, block_ms: int) -> Path:
        genesis = operator_genesis(self.community, pk(OPERATOR), validators=VALIDATORS, block_ms=block_ms)
        return write_ledger_dir(root, self.community, genesis)


@pytest.fixture
def validators(tmp_path, mosquitto, make_client):
    v = Validators(tmp_path, mosquitto.port, make_client, trades=TRADES)
    yield v
    v.close()


@pytest.fixture
def operated(tmp_path, mosquitto, make_client):
    v = OperatorValidators(tmp_path, mosquitto.port, make_client, trades=0)
    yield v
    v.close()


def test_a_meter_fetches_the_statement_the_ledger_holds(tmp_path, mosquitto, validators):
    start = wall_ms() - 60_000
    for i in range(VALIDATORS):
        validators.start(i)
    validators.publish(validators.trades)
    validators.wait_settled(TRADES)
    validators.wait_heads_agree()
    end = wall_ms() + 1
    wait_for(lambda: wall_ms() > end, 5, lambda: "the clock passes the period's end")
    genesis = validators.genesis()
    household = validators.community.households[0]
    meter = meter_dir(tmp_path / "meter", validators.community, genesis.validators, 0)
    period = ("--from", iso(start), "--to", iso(end), "--format", "json")

    fetched = json.loads(run("edge.cli", "statement", meter, "--broker", f"127.0.0.1:{mosquitto.port}", *period))
    held = json.loads(run("ledger.cli", "statement", validators.root, pk(household.account).hex(), *period))

    assert fetched == held
    mine = [t for t in validators.trades if 0 in (t[2], t[3])]  # (ctp, erc, payer, payee, amount)
    assert len(fetched["lines"]) == len(mine) > 0
    bought = sum(t[4] for t in mine if t[2] == 0)
    sold = sum(t[4] for t in mine if t[3] == 0)
    assert (fetched["totals"]["bought_units"], fetched["totals"]["sold_units"]) == (bought, sold)
    store = validators.store(0)
    assert (fetched["closing"]["balance"], fetched["closing"]["held"]) == store.account(pk(household.account))
    store.close()
    assert fetched["opening"] == {"balance": 100_000, "held": 0}


def test_a_meter_that_no_validator_answers_says_so(tmp_path, mosquitto, validators):
    genesis = validators.genesis()
    meter = meter_dir(tmp_path / "meter", validators.community, genesis.validators, 0)
    now = wall_ms()
    done = run_module(
        "edge.cli",
        "statement",
        meter,
        "--broker",
        f"127.0.0.1:{mosquitto.port}",
        "--from",
        iso(now - 60_000),
        "--to",
        iso(now),
        "--timeout",
        "1",
    )
    assert (done.returncode, done.stderr) == (1, "spb-meter: no validator answered within 1 s\n")


def test_funds_and_payouts_over_the_bus_are_lines_the_meter_reads_and_proof_proves(tmp_path, mosquitto, operated):
    """A fund and a payout sent to the validators on the bus: the meter's statement lists them
    as `spb-ledger statement` does, and `spb-ledger proof` proves each by its message hash."""
    start = wall_ms() - 60_000
    for i in range(VALIDATORS):
        operated.start(i)
    account = pk(operated.community.households[0].account)
    fund = Fund(op=pk(OPERATOR), account=account, amount=500, ref="bank-1", t=wall_ms()).sign(OPERATOR)
    payout = Payout(op=pk(OPERATOR), account=account, amount=200, ref="bank-2", t=wall_ms()).sign(OPERATOR)
    operated.households.publish(topics.TX_FUND, fund)
    operated.households.publish(topics.TX_PAYOUT, payout)

    def applied() -> bool:
        stores = [operated.store(i) for i in range(VALIDATORS)]
        counts = [store.db.execute("SELECT count(*) FROM money").fetchone()[0] for store in stores]
        for store in stores:
            store.close()
        return counts == [2] * VALIDATORS

    logs = operated.procs.logs
    wait_for(applied, 60, lambda: f"the fund and payout everywhere; {rejections(operated.inbox)}\n{logs()}")
    end = wall_ms() + 1
    wait_for(lambda: wall_ms() > end, 5, lambda: "the clock passes the period's end")
    genesis = operated.genesis()
    meter = meter_dir(tmp_path / "meter", operated.community, genesis.validators, 0)
    period = ("--from", iso(start), "--to", iso(end), "--format", "json")

    fetched = json.loads(run("edge.cli", "statement", meter, "--broker", f"127.0.0.1:{mosquitto.port}", *period))
    held = json.loads(run("ledger.cli", "statement", operated.root, "m0001", *period, "--validator", "2"))

    assert fetched == held
    assert [(line["kind"], line["amount"], line["ref"]) for line in fetched["lines"]] == [
        ("fund", 500, "bank-1"),
        ("payout", 200, "bank-2"),
    ]
    assert fetched["opening"]["balance"] == BALANCE and fetched["closing"]["balance"] == BALANCE + 300
    for line in fetched["lines"]:
        proof = tmp_path / f"{line['kind']}.json"
        proof.write_text(run("ledger.cli", "proof", operated.root, line["id"]))
        checked = run("ledger.cli", "check-proof", proof, "--genesis", operated.root)
        assert checked == f"proof ok: {line['kind']} {line['id']} decided in block {line['height']}\n"
