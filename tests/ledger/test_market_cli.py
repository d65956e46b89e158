"""`spb-ledger market` and `spb-ledger tokens` on a validator's database (ledger/market_text.py)."""

from __future__ import annotations

import pytest

from ledger.cli import main
from ledger.workload import SimCommunity
from tests.support.ledger import NOW
from tests.support.market import I, K, Market, MarketChain, order_id


@pytest.fixture
def cleared(tmp_path):
    c = SimCommunity(4, NOW)
    m = Market(c)
    chain = MarketChain(tmp_path, c)
    a, b = m.ask(0, 10, 5), m.bid(3, 8, 7)
    seal, _ = m.seal(2, m.bid(2, 1, 1, k=K + 1), deposit=9, k=K + 1)
    chain.block(NOW, ("ask", a), ("bid", b), ("seal", seal))
    chain.block(K * I)
    chain.block((K + 1) * I, ("export", m.export(0, K, 9, 9)))
    [fill] = [r for r in chain.state.ctps.values() if r.fill is not None]
    chain.block((K + 1) * I + 1, ("erc", m.erc(3, fill.ctp.id, 8)))
    chain.store.close()
    return tmp_path, a, b, seal, fill


def run(capsys, *argv) -> list[str]:
    assert main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_market_lists_each_interval_with_orders(cleared, capsys):
    root, *_ = cleared
    assert run(capsys, "market", str(root)) == [
        f"interval {K} cleared orders 2 green - 0 open 6 8 fills 1 height 2",
        f"interval {K + 1} open orders 1 clears {(K + 1) * I + 2000}",
    ]


def test_market_shows_one_intervals_book_result_and_fills(cleared, capsys):
    root, a, b, seal, fill = cleared
    assert run(capsys, "market", str(root), "--interval", str(K), "--validator", "0") == [
        f"order {order_id(a).hex()} ask partial filled 8 wh 10 price 5 src solar",
        f"order {order_id(b).hex()} bid filled filled 8 wh 8 price 7",
        "product green price - wh 0",
        "product open price 6 wh 8",
        f"fill {fill.ctp.id.hex()} {order_id(b).hex()} {order_id(a).hex()} 8 48 settled",
    ]
    assert run(capsys, "market", str(root), "--interval", str(K + 1)) == [
        f"order {order_id(seal).hex()} bid sealed filled 0 deposit 9"
    ]


def test_tokens_prints_one_line_per_registered_source(cleared, capsys):
    root, *_ = cleared
    assert run(capsys, "tokens", str(root), "--interval", str(K)) == ["solar minted 9 sold 8", "grid minted 0 sold 0"]
    assert run(capsys, "tokens", str(root), "--interval", str(K + 1)) == [
        "solar minted 0 sold 0",
        "grid minted 0 sold 0",
    ]
