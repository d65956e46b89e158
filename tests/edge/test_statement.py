"""The meter's side of statements (decision 0017) that needs no broker: the dates
`spb-meter statement` takes, joining the pieces of a statement split by the validators, and
the refusals it makes before connecting. Over a real bus: tests/system/test_statement_bus.py."""

from __future__ import annotations

import argparse

import pytest

from broker.statement_text import iso_ms
from edge import cli
from edge.statement import join
from wire.statement import AccountStatement, Line, StatementMismatch

DAY = 86_400_000
T0 = 1_796_083_200_000  # 2026-12-01T00:00:00Z


def test_dates_are_utc_unless_they_say_otherwise():
    assert iso_ms("2026-12-01") == T0
    assert iso_ms("2026-12-01T01:00:00.250") == T0 + 3_600_250
    assert iso_ms("2026-12-01T01:00:00+01:00") == T0
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO date"):
        iso_ms("yesterday")


def piece(start: int, end: int, opening: int, lines: tuple[Line, ...], closing: int) -> AccountStatement:
    return AccountStatement(bytes(32), start, end, 1, (opening, 0), (closing, 0), lines)


def test_pieces_join_into_one_statement_that_must_still_add_up():
    fund = Line("fund", 2, T0 + 10, bytes(32), 5, ref="bank")
    sold = Line("sold", 3, T0 + DAY + 10, bytes(16), 12, wh=4, state="settled", party=bytes(32))
    first, second = piece(T0, T0 + DAY, 100, (fund,), 105), piece(T0 + DAY, T0 + 2 * DAY, 105, (sold,), 117)
    joined = join([first, second])
    assert (joined.start, joined.end, joined.opening, joined.closing) == (T0, T0 + 2 * DAY, (100, 0), (117, 0))
    assert joined.lines == (fund, sold) and joined.totals().sold_units == 12
    with pytest.raises(StatementMismatch):
        join([first, piece(T0 + DAY, T0 + 2 * DAY, 100, (sold,), 112)])  # the second piece lost a line


def test_an_empty_period_is_refused_before_any_connection(tmp_path, capsys):
    meter = tmp_path / "meter"
    meter.mkdir()
    (meter / "meter.toml").write_text('id = "m0001"\nca_pk = "' + "00" * 32 + '"\nvalidators = ["' + "11" * 32 + '"]\n')
    (meter / "device.key").write_text("22" * 32 + "\n")
    (meter / "devcert.cbor").write_bytes(b"")
    (meter / "account.key").write_text("33" * 32 + "\n")
    argv = ["statement", str(meter), "--broker", "127.0.0.1:1", "--from", "2026-12-02", "--to", "2026-12-01"]
    assert cli.main(argv) == 1
    assert "the period is empty" in capsys.readouterr().err
