"""`spb-meter status --json`: the facts of `spb-meter status` as one JSON object, read from
the meter's store once, and the text made from the same facts."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing

from broker.clock import wall_ms
from deploy.provision import provision
from edge.cli import main, status_lines
from edge.state_dir import MeterIdentity
from edge.store import AccountRow, MeterStore, OrderRow, SaleRow
from tests.support.meter import add_witnessed_batch
from wire import topics

PAYER = b"p" * 32
S, T, U = (c.encode().hex() * 16 for c in "STU")  # sale and fill ids, as hex


def test_status_json_is_the_store_s_facts_and_the_text_is_made_from_them(tmp_path, capsys):
    now = wall_ms()
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now)
    me, witness = (MeterIdentity.load(community.root / "meters" / m) for m in ("m0001", "m0002"))
    state_dir = me.root
    with closing(MeterStore(state_dir / "meter.db")) as store:
        add_witnessed_batch(store, me, witness, now)
    assert main(["ctp", str(state_dir), community.meters[1].account_pk, "30", "10", "--expiry", "60"]) == 0
    ctp = capsys.readouterr().out.strip()
    assert main(["erc", str(state_dir), ctp, "12"]) == 0
    capsys.readouterr()
    # What a running meter would have written besides: sales and a fill of ours from
    # statuses, the household's account status, an order, export records and a dropped reading.
    with closing(MeterStore(state_dir / "meter.db")) as store:
        store.add_sale(SaleRow(b"S" * 16, "sold", PAYER, b"m" * 32, 5, now, "held", None, 2 * 3_600_000 + 5, now))
        store.add_sale(SaleRow(b"T" * 16, "sold", PAYER, b"m" * 32, None, now, "settled", None, 0, now))
        store.add_sale(SaleRow(b"U" * 16, "bought", b"m" * 32, PAYER, 4, now, "held", b"O" * 16, 0, now))
        store.save_account(AccountRow(970, 30, now - 1000, 12, b"signed status", b"k" * 32))
        order = OrderRow(
            *(b"O" * 16, "bid", 99, 4, 7, 1, b"bid msg", None, None, None, None, b"r" * 32),
            *("open", "", 3, 0, now, now, now),
        )
        store.add_order(order, topics.TX_BID)
    with closing(sqlite3.connect(state_dir / "meter.db")) as db, db:
        db.executemany(
            "INSERT INTO exports (k, raw, wh, total, sent, reason) VALUES (?, ?, ?, ?, ?, ?)",
            [(k, b"record", k - 40, 100 + k, now, "late" if k == 47 else "") for k in range(41, 48)],
        )
        db.execute("INSERT INTO dropped VALUES ('outbox-full', 3)")

    assert main(["status", str(state_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "one JSON object on one line"
    facts = json.loads(out)

    assert now <= facts["t_ms"] <= wall_ms()
    with closing(MeterStore(state_dir / "meter.db")) as store:
        (trade,), (batch,) = store.trades(), store.batches()
        expected = {
            "meter": "m0001",
            "t_ms": facts["t_ms"],
            "wh_in": 0,
            "wh_out": 0,
            "outbox": {"messages": store.outbox_size(), "dropped": {"outbox-full": 3}},
            "key_batches": [{"batch": batch.id, "keys": 4, "keys_free": 3, "coe_exp_ms": batch.coe_exp}],
            "trades": [
                {
                    "ctp": ctp,
                    "state": "sent",
                    "reason": None,
                    "wh": 10,
                    "delivered_wh": 0,
                    "exp_ms": trade.exp,
                    "erc_sent": True,
                    "cancel_sent": False,
                }
            ],
            "exports": [
                {"interval": k, "wh": k - 40, "total_wh": 100 + k, "reason": "late" if k == 47 else None}
                for k in range(43, 48)
            ],
            "sales": {
                "held": 1,
                "held_wh_to_export": 3,  # 5 Wh sold, 2 Wh (and 5 W·ms) exported for it
                "list": [
                    {"ctp": S, "role": "sold", "state": "held", "wh": 5, "delivered_wh": 2},
                    {"ctp": T, "role": "sold", "state": "settled", "wh": None, "delivered_wh": 0},
                    {"ctp": U, "role": "bought", "state": "held", "wh": 4, "delivered_wh": 0},
                ],
            },
            "account": {"balance_units": 970, "held_units": 30, "t_ms": now - 1000, "h": 12},
            "orders": [
                {
                    "order": ("O" * 16).encode().hex(),
                    "side": "bid",
                    "interval": 99,
                    "wh": 4,
                    "price_units_per_wh": 7,
                    "green": True,
                    "sealed": False,
                    "state": "open",
                    "reason": None,
                    "filled_wh": 3,
                    "withdraw_sent": False,
                }
            ],
        }
    assert expected["outbox"]["messages"] == 3  # the CTP, the ERC and the bid
    assert facts == expected

    assert main(["status", str(state_dir)]) == 0
    text = capsys.readouterr().out
    # The same lines as made from the JSON's facts, but for relative times (read a moment later).
    assert _clockless(text.splitlines()) == _clockless(status_lines(facts))
    assert "outbox   3 message(s) waiting for the broker; dropped: 3 outbox-full" in text
    assert "batch #1: 3 of 4 one-time keys free, CoE valid until in " in text
    assert f"trade    {ctp}  sent  0/10 Wh  expires in " in text and text.count("ERC sent") == 1
    assert "export   interval 47: 7 Wh exported, 147 Wh in all (late)\n" in text and "interval 42" not in text
    assert f"sale     {S}  held  2 Wh exported of 5 Wh\n" in text
    assert f"sale     {T}  settled  0 Wh exported of ? Wh\n" in text
    assert U not in text, "the text shows sales, not bought fills"
    assert text.endswith("sales    1 held, 3 Wh still to export for them\n")


def _clockless(lines: list[str]) -> list[str]:
    return [re.sub(r"in \d+ s|\d+ s ago", "<when>", line) for line in lines]


def test_status_json_of_a_fresh_meter(tmp_path, capsys):
    community = provision(tmp_path / "c", meters=1, accounts=None, validators=1, now_ms=wall_ms())
    assert main(["status", str(community.root / "meters" / "m0001"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["account"] is None and facts["trades"] == facts["orders"] == facts["exports"] == []
    assert facts["sales"] == {"held": 0, "held_wh_to_export": 0, "list": []}
    assert (facts["wh_in"], facts["wh_out"], facts["outbox"]["dropped"]) == (0, 0, {})
