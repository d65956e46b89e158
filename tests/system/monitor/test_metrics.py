"""`spb-monitor metrics` scraped over HTTP while the street trades, each figure checked
against what the validators' own databases say (LedgerState), not against the monitor's
idea of it."""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.bus import wait_for
from tests.support.street import STREET, VALIDATORS, Street
from wire.messages import CtpState


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def ledger_counts(street: Street) -> tuple[int, Counter, dict[str, tuple[int, int]]]:
    """Validator 0's height, its trades by state and each meter's (balance, held), from its database."""
    state = street.state(0)
    money = {}
    for meter, pk in street.account.items():
        account = state.account(pk)
        assert account is not None, meter
        money[meter] = (account.balance, account.held)
    return state.height, Counter(str(r.state) for r in state.ctps.values()), money


def test_the_exporter_agrees_with_the_ledger(street, local_url, monitor_process):
    _, line = monitor_process("metrics", "--broker", local_url, "--port", "0", ready="metrics ")
    url = line.split()[1]
    wait_for(
        lambda: ledger_counts(street)[1][CtpState.SETTLED] > 0,
        120,
        lambda: f"a settled trade{street.procs.logs()}",
        interval=0.2,
    )

    def agreeing() -> dict | None:
        """A scrape taken between two identical ledger reads: the street trades on, so retry
        until one lands in a quiet moment."""
        before = ledger_counts(street)
        samples = scrape(url)
        if ledger_counts(street) != before:
            return None
        height, states, money = before
        ours = {
            state: samples.get(("spb_trade_statuses_total", (("state", state),)), 0) for state in ("held", "settled")
        }
        heights = [samples.get(("spb_validator_height", (("validator", f"v{i}"),))) for i in range(VALIDATORS)]
        seen = samples.get(("spb_block_height", ()))
        theirs = {
            meter: (
                samples.get(("spb_account_balance_units", (("account", pk.hex()[:16]), ("meter", meter)))),
                samples.get(("spb_account_held_units", (("account", pk.hex()[:16]), ("meter", meter)))),
            )
            for meter, pk in street.account.items()
        }
        if seen == height and height in heights and ours["settled"] == states[CtpState.SETTLED] and theirs == money:
            return samples
        return None

    samples = wait_for(agreeing, 60, lambda: f"a scrape that agrees with the ledger: {scrape(url)}", interval=0.3)
    assert samples is not None
    # Every trade the ledger ever held was seen held or already past it (a retained final status).
    held = samples.get(("spb_trade_statuses_total", (("state", "held"),)), 0)
    assert held <= sum(ledger_counts(street)[1].values())
    for h in STREET:
        assert samples[("spb_meter_online", (("meter", h.meter),))] == 1
        assert samples[("spb_meter_readings_total", (("meter", h.meter),))] > 0
        watts = samples[("spb_meter_power_watts", (("meter", h.meter),))]
        assert abs(watts - h.watts) <= abs(h.watts) // 100 + 1, (h.meter, watts)
    assert not any(name == "spb_unverified_messages_total" for name, _ in samples), "every message verified"


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist(street, local_url, monitor_process, validator_metrics):
    """docs/grafana/spb-community.json, imported as is, draws every panel from the exporter
    and the validators' own metrics (once there was a reading and a clearing to tell)."""
    board = json.loads((Path(__file__).parents[3] / "docs" / "grafana" / "spb-community.json").read_text())
    asked = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bspb_[a-z_]+", target["expr"])
    }
    assert len(asked) >= 10
    _, line = monitor_process("metrics", "--broker", local_url, "--port", "0", ready="metrics ")

    def missing() -> set[str]:
        exposed = {name for url in [line.split()[1], *validator_metrics] for name, _ in scrape(url)}
        # absent until something happens, declared all the same: refused messages, rejects
        return asked - exposed - {"spb_unverified_messages_total", "spb_ledger_rejects_total"}

    wait_for(lambda: not missing(), 60, lambda: f"the exporter lacks {missing()}{street.procs.logs()}", interval=0.3)
