"""spb-monitor metrics: the community as Prometheus metrics, from verified messages only.

A custom collector reads the view at each scrape (prometheus-client's documented pattern for
exporters of another system's state), so nothing is counted twice and a scrape sees one
consistent moment. Names follow Prometheus' conventions: a unit suffix, `_total` on
counters. Energy is in Wh and money in the community's units, as on the wire, not converted
to joules: they are integers everywhere else in the project, and a dashboard shows them so.
Values a meter or the ledger has not told yet are absent, not zero.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from monitor.feed import Feed
from monitor.records import PRODUCTS
from monitor.runner import connected_feed, port_arguments, say, until_signalled
from monitor.view import OPEN_ORDER


class CommunityCollector(Collector):
    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        with self.feed.lock:
            snap = self.feed.view.snapshot()
            view = self.feed.view
            yield from _meters(snap["meters"])
            yield from _accounts(snap["accounts"])
            yield _counter(
                "spb_trade_statuses",
                "trades that reached each state (each trade once per state)",
                "state",
                view.trade_states,
            )
            yield from _market(snap, view.cleared_wh, view.fills)
            yield from _validators(snap["validators"])
            yield from _blocks(snap["blocks"], view.block_gaps_ms)
            yield _counter("spb_transactions", "verified transactions on the bus, by type", "type", view.transactions)
            yield _counter("spb_ledger_rejects", "the ledger's rejects, by reason", "reason", view.rejects)
            yield _counter(
                "spb_unverified_messages", "messages the monitor refused, by reason", "reason", view.unverified
            )
            messages = CounterMetricFamily("spb_monitor_messages", "messages the monitor read off the bus")
            messages.add_metric([], self.feed.messages)
            yield messages


def _meters(meters: list[dict[str, Any]]) -> Iterator[Metric]:
    online = GaugeMetricFamily("spb_meter_online", "1 while the meter's state is online", labels=["meter"])
    power = GaugeMetricFamily(
        "spb_meter_power_watts", "last signed reading's power (+ import, - export)", labels=["meter"]
    )
    imported = CounterMetricFamily(
        "spb_meter_imported_wh", "energy imported, Wh, from the last reading", labels=["meter"]
    )
    exported = CounterMetricFamily(
        "spb_meter_exported_wh", "energy exported, Wh, from the last reading", labels=["meter"]
    )
    readings = CounterMetricFamily("spb_meter_readings", "signed readings verified", labels=["meter"])
    for m in meters:
        meter = m["meter"]
        online.add_metric([meter], 1.0 if m.get("online") else 0.0)
        reading = m.get("reading")
        if reading:
            power.add_metric([meter], reading["w"])
            imported.add_metric([meter], reading["wh_in"])
            exported.add_metric([meter], reading["wh_out"])
        readings.add_metric([meter], m.get("readings", 0))
    yield from (online, power, imported, exported, readings)


def _accounts(accounts: list[dict[str, Any]]) -> Iterator[Metric]:
    balance = GaugeMetricFamily("spb_account_balance_units", "free balance", labels=["account", "meter"])
    held = GaugeMetricFamily(
        "spb_account_held_units", "units held in trades and orders' escrow", labels=["account", "meter"]
    )
    for a in accounts:
        labels = [a["account"][:16], a.get("meter") or ""]
        balance.add_metric(labels, a["balance_units"])
        held.add_metric(labels, a["held_units"])
    yield from (balance, held)


def _market(snap: dict[str, Any], cleared_wh: dict[str, int], fills: int) -> Iterator[Metric]:
    price = GaugeMetricFamily(
        "spb_market_clearing_price_units_per_wh", "the last cleared interval's price, per product", labels=["product"]
    )
    volume = GaugeMetricFamily(
        "spb_market_last_cleared_wh", "the last cleared interval's Wh, per product", labels=["product"]
    )
    last = GaugeMetricFamily("spb_market_last_interval", "the last interval with a clearing result")
    if snap["results"]:
        result = snap["results"][-1]
        last.add_metric([], result["k"])
        for product in PRODUCTS:
            if result[product]["price_units_per_wh"] is not None:
                price.add_metric([product], result[product]["price_units_per_wh"])
            volume.add_metric([product], result[product]["wh"])
    yield from (price, volume, last)
    yield _counter("spb_market_cleared_wh", "Wh cleared, per product, over every result seen", "product", cleared_wh)
    total = CounterMetricFamily("spb_market_fills", "fills of every result seen")
    total.add_metric([], fills)
    yield total
    book = GaugeMetricFamily("spb_market_open_orders", "orders open or sealed in the book", labels=["side"])
    for side in ("ask", "bid"):
        book.add_metric([side], sum(o["side"] == side and o["state"] in OPEN_ORDER for o in snap["orders"]))
    yield book


def _validators(validators: list[dict[str, Any]]) -> Iterator[Metric]:
    height = GaugeMetricFamily("spb_validator_height", "committed height the validator last said", labels=["validator"])
    online = GaugeMetricFamily("spb_validator_online", "1 while the validator's state is online", labels=["validator"])
    rnd = GaugeMetricFamily(
        "spb_validator_round", "highest consensus round heard from it at its height", labels=["validator"]
    )
    changes = CounterMetricFamily("spb_validator_round_changes", "round-change messages it sent", labels=["validator"])
    for v in validators:
        name = [v["validator"]]
        height.add_metric(name, v["height"])
        online.add_metric(name, 1.0 if v["online"] else 0.0)
        rnd.add_metric(name, v["round"])
        changes.add_metric(name, v["round_changes"])
    yield from (height, online, rnd, changes)


def _blocks(blocks: list[dict[str, Any]], gaps_ms: list[int]) -> Iterator[Metric]:
    if blocks:
        last = GaugeMetricFamily("spb_block_height", "height of the last sealed block seen")
        last.add_metric([], blocks[-1]["height"])
        when = GaugeMetricFamily("spb_block_time_seconds", "block time of the last sealed block seen (Unix seconds)")
        when.add_metric([], blocks[-1]["t_ms"] / 1000)
        yield from (last, when)
    gaps = SummaryMetricFamily("spb_block_interval_seconds", "block time between consecutive blocks seen")
    gaps.add_metric([], count_value=gaps_ms[1], sum_value=gaps_ms[0] / 1000)
    yield gaps


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def add_arguments(p: argparse.ArgumentParser) -> None:
    port_arguments(p)


def run(args: argparse.Namespace) -> int:
    stop = until_signalled()
    with connected_feed(args) as (feed, _client):
        registry = CollectorRegistry()
        registry.register(CommunityCollector(feed))
        server, thread = start_http_server(args.port, args.host, registry=registry)
        say(f"metrics http://{args.host}:{server.server_port}/metrics")
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    return 0
