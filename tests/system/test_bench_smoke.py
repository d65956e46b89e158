"""The benches run briefly and print their figures consistently; speed itself is never asserted in the suite."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.bus import REPO, child_env


def test_wire_bench_prints_rates_and_a_ratio_against_raw_verify():
    result = subprocess.run(
        [sys.executable, "bench/protocol.py", "--seconds", "0.05"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rates = dict(
        re.findall(r"^(raw Ed25519 verify|ERC sign\+encode|ERC decode\+verify)\s+(\d+) /s", result.stdout, re.M)
    )
    assert len(rates) == 3 and all(int(r) > 0 for r in rates.values()), result.stdout
    ratio = float(re.search(r"^ratio verify/raw\s+([\d.]+)", result.stdout, re.M).group(1))
    assert abs(ratio - int(rates["ERC decode+verify"]) / int(rates["raw Ed25519 verify"])) < 0.01


def run_bench(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_spb_paper_bench_prints_time_and_chain_bytes_beside_the_paper_and_the_targets():
    out = run_bench("bench/spb_paper.py", "--trades", "10", "--households", "3")
    ours = re.search(r"^SPB flow, this run\s+([\d.]+) s\s+([\d,]+) B\s+([\d,]+) B$", out, re.M)
    baseline = re.search(r"^baseline, modelled \(\*\)\s+n/a\s+([\d,]+) B\s+([\d,]+) B$", out, re.M)
    assert ours and baseline, out
    chain, per_trade = (int(ours.group(i).replace(",", "")) for i in (2, 3))
    assert abs(chain / 10 - per_trade) <= 1
    # three signed transactions per trade instead of one: the baseline can only be bigger
    assert int(baseline.group(1).replace(",", "")) > chain
    for line in (
        r"SPB, Dorri et al\.\s+16\.6 min\s+520\.0 KB",
        r"baseline, Dorri et al\.\s+32\.0 min\s+860\.0 KB",
        r"target\s+< 2 s\s+<= 400 B",
        r"validator database: same chain bytes as the bus; audit ok: "
        r"height \d+, 10 trades, 10 CTPs",
        r"target time < 2 s\s+(met|NOT met)",
        r"target chain <= 400 B/trade\s+(met|NOT met)",
    ):
        assert re.search(f"^{line}", out, re.M), (line, out)


def test_saturation_bench_prints_settled_rates_and_ratios_against_the_verify_bound():
    out = run_bench(
        "bench/saturation.py",
        "--trades",
        "100",
        "--block",
        "25",
        "--e2e-trades",
        "100",
        "--rounds",
        "1",
        "--e2e-rounds",
        "1",
        "--seconds",
        "0.05",
    )
    raw = int(re.search(r"^raw Ed25519 verify \(CTP/ERC length\)\s+(\d+) /s$", out, re.M).group(1))
    bound = int(re.search(r"^bound \(2 verifies per trade\)\s+(\d+) trades/s$", out, re.M).group(1))
    assert abs(bound - raw / 2) <= 1, out
    for name in ("core: LedgerNode, no MQTT", "end to end over Mosquitto"):
        found = re.search(f"^{name}\\s+(\\d+) trades/s\\s+ratio ([\\d.]+)\\s+\\(target >= 0.4\\)$", out, re.M)
        assert found, (name, out)
        assert int(found.group(1)) > 0 and abs(float(found.group(2)) - int(found.group(1)) / bound) < 0.01
    assert re.search(r"^core: \d+ us per settled trade \(100 trades, 25 per block\)", out, re.M), out


def test_meter_bench_prints_cpu_per_hour_and_peak_rss_against_the_budget_alone_and_with_the_agent():
    out = run_bench("bench/meter.py", "--seconds", "2", "--warmup", "1", "--interval-s", "5")
    assert re.search(
        r"^start-up CPU \(until online\)\s+[\d.]+ s\s+a bare python importing the same modules: "
        r"[\d.]+ s$",
        out,
        re.M,
    ), out
    steady = re.search(r"^steady CPU\s+([\d.]+) s/h\s+([\d.]+)% of one core$", out, re.M)
    rss = re.search(r"^peak RSS \(VmHWM\)\s+([\d.]+) MB\s+the bare python: [\d.]+ MB$", out, re.M)
    assert steady and rss, out
    assert re.search(r"^  fake ADC alone \(in this process\)\s+[\d.]+ s/h\s+\d+ us per sample", out, re.M), out
    cpu_ratio = float(re.search(r"^cpu ([\d.]+) of budget  \(< 72 CPU s per hour", out, re.M).group(1))
    rss_ratio = float(re.search(r"^rss ([\d.]+) of budget  \(< 60 MB", out, re.M).group(1))
    assert abs(cpu_ratio - float(steady.group(1)) / 72) < 0.01 and abs(rss_ratio - float(rss.group(1)) / 60) < 0.01
    assert float(rss.group(1)) > 0

    # The agent's phase: its first order ends the warm-up, so at least one was placed, a bid
    # (the measured meter imports), and the ledger refused none.
    placed = re.search(r"^  in all, since it started\s+(\d+)\s+bid (\d+), (\d+) Wh; (.*)$", out, re.M)
    in_window = re.search(r"^agent orders placed in the window\s+(\d+)\s+", out, re.M)
    assert placed and in_window, out
    assert int(placed.group(1)) == int(placed.group(2)) >= 1 and int(placed.group(3)) > 0, out
    assert int(in_window.group(1)) < int(placed.group(1)) and "rejected" not in placed.group(4), out
    assert re.search(r"^ +no market +agent +agent-no +bound +budget$", out, re.M), out
    cpu = re.search(r"^steady CPU \(s/h\)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)\s+[\d.]+\s+72\.0$", out, re.M)
    peak = re.search(r"^peak RSS \(VmHWM, MB\)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)\s+[\d.]+\s+60\.0$", out, re.M)
    assert cpu and peak, out
    for row, alone in ((cpu, steady), (peak, rss)):  # the first column is the no-market phase's
        assert (
            row.group(1) == alone.group(1)
            and abs(float(row.group(3)) - (float(row.group(2)) - float(row.group(1)))) <= 0.2
        )
    agent_cpu = float(re.search(r"^cpu with the agent ([\d.]+) of budget  \(< 72 CPU s", out, re.M).group(1))
    agent_rss = float(re.search(r"^rss with the agent ([\d.]+) of budget  \(< 60 MB", out, re.M).group(1))
    assert abs(agent_cpu - float(cpu.group(2)) / 72) < 0.01 and abs(agent_rss - float(peak.group(2)) / 60) < 0.01


def test_consensus_bench_prints_four_validators_beside_one_with_the_targets_and_the_checks():
    out = run_bench(
        "bench/consensus.py",
        "--trades",
        "40",
        "--rounds",
        "1",
        "--seconds",
        "1",
        "--rate",
        "20",
        "--block-ms",
        "50",
        "--verify-seconds",
        "0.05",
    )
    raw = int(re.search(r"^raw Ed25519 verify \(CTP/ERC length\)\s+(\d+) /s", out, re.M).group(1))
    for n in (4, 1):  # each validator verifies every trade twice, on min(cores, n) cores
        found = re.search(rf"^bound, {n} validators? on (\d+) cores\s+(\d+) trades/s", out, re.M)
        cores, bound = map(int, found.groups())
        assert abs(bound - raw * min(cores, n) / (2 * n)) <= 1, out
    assert re.search(r"^block_ms 50\s+4 validators\s+1 validator\s+4/1$", out, re.M), out
    rate = re.search(r"^settled trades/s at saturation\s+(\d+)\s+(\d+)\s+([\d.]+)$", out, re.M)
    assert rate and int(rate.group(1)) > 0 and int(rate.group(2)) > 0, out
    assert abs(float(rate.group(3)) - int(rate.group(1)) / int(rate.group(2))) < 0.01 + 1 / int(rate.group(2)), out
    for p in ("p50", "p99"):
        assert re.search(rf"^ERC->settled {p} at 20/s \(ms\)\s+\d+\s+\d+\s+[\d.]+$", out, re.M), (p, out)
    # fault-free runs: the checks after stopping the validators must hold (counted, not timed)
    assert re.search(r"^heads agree, audits pass\s+yes\s+yes$", out, re.M), out
    assert re.search(r"^statuses per CTP change \(1 expected\)\s+[\d.]+\s+[\d.]+$", out, re.M), out
    assert len(re.findall(r"audit ok: height \d+, 60 trades, 60 CTPs", out)) == 2, out
    assert re.search(
        r"^  saturation CPU .* ledgers [\d.]+ s \(v0 [\d.]+, v1 [\d.]+, v2 [\d.]+, v3 [\d.]+;.*mosquitto "
        r"[\d.]+ s, bench client [\d.]+ s",
        out,
        re.M,
    ), out
    assert re.search(r"^target 4 validators >= 1,000 settled/s\s+(met|NOT met)", out, re.M), out
    assert re.search(r"^target 4 validators p50 < 300 ms at 100/s\s+(met|NOT met)", out, re.M), out


def test_clearing_bench_prints_clear_beside_the_sort_of_the_same_book_and_the_ratio_at_other_sizes():
    out = run_bench("bench/clearing.py", "--orders", "1000", "--runs", "1")
    book = re.search(r"^book: 1,000 orders, ([\d,]+) bids \([\d,]+ green\), ([\d,]+) asks, seed 1$", out, re.M)
    assert book and sum(int(n.replace(",", "")) for n in book.groups()) == 1000, out
    for product in ("green", "open "):
        assert re.search(rf"^  {product} price (\d+|-), [\d,]+ Wh$", out, re.M), out
    sort = float(re.search(r"^sort bids and asks\s+([\d.]+) ms  \(bound, median of 1\)$", out, re.M).group(1))
    clear = float(re.search(r"^clear\s+([\d.]+) ms  \(median of 1\)$", out, re.M).group(1))
    ratio = float(re.search(r"^ratio clear/sort\s+([\d.]+)$", out, re.M).group(1))
    assert sort > 0 and clear > 0 and abs(ratio - clear / sort) <= 0.01 + 0.01 * ratio, out
    for n in ("100", "10,000"):
        assert re.search(rf"^ratio at {n} orders\s+[\d.]+     \(sort [\d.]+ ms, clear [\d.]+ ms\)$", out, re.M), out


def test_market_bench_prints_accepted_orders_beside_the_verify_bound():
    sizes = ["--orders", "60", "--block", "20", "--e2e-orders", "60", "--rounds", "1", "--e2e-rounds", "1"]
    out = run_bench("bench/market.py", *sizes, "--seconds", "0.05")
    raw = int(re.search(r"^raw Ed25519 verify \(ask/bid length\)\s+(\d+) /s$", out, re.M).group(1))
    bound = int(re.search(r"^bound \(1 verify per order\)\s+(\d+) orders/s$", out, re.M).group(1))
    assert raw > 0 and bound == raw, out
    for name in ("end to end over Mosquitto", "core: LedgerNode, no MQTT"):
        found = re.search(f"^{name}\\s+(\\d+) orders/s\\s+ratio ([\\d.]+)$", out, re.M)
        assert found, (name, out)
        assert int(found.group(1)) > 0 and abs(float(found.group(2)) - int(found.group(1)) / bound) < 0.01
    assert re.search(r"^core: \d+ us per accepted order \(60 orders, 20 per block\)$", out, re.M), out
    cpu = r"^end to end, 60 orders per round, block_ms \d+: CPU during the run .* ledger [\d.]+ s"
    assert re.search(cpu, out, re.M), out


def test_monitor_bench_prints_the_views_rates_beside_the_verify_bound():
    out = run_bench("-m", "bench.monitor", "--seconds", "0.05")
    bound = int(re.search(r"^raw Ed25519 verify \(bound\)\s+([\d,]+) /s", out, re.M).group(1).replace(",", ""))
    for name in ("reading", "status"):
        rate, ratio = re.search(rf"^view: {name}\s+([\d,]+) /s\s+([\d.]+)x the bound", out, re.M).groups()
        assert abs(int(rate.replace(",", "")) / bound - float(ratio)) < 0.01, out
    assert re.search(r"keeps up with at one reading per 10 s: [\d,]+ \(one core\)", out), out


def test_ledger_memory_bench_prints_start_up_and_rss_per_history_beside_the_target():
    out = run_bench("bench/ledger_memory.py", "--sizes", "300,3000", "--open", "5", "--per-block", "100", "--runs", "1")
    rows = re.findall(r"^\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [int(r[0].replace(",", "")) for r in rows] == [300, 3000], out
    assert all(int(r[4]) == 5 for r in rows), "each database ends with its held CTPs open"
    assert all(int(r[3]) <= 4 * 5 * 12 + 12 for r in rows), "the tree keeps open paths and the frontier only"
    summary = r"^3,000 vs 300 trades: start-up ([\d.]+)x, peak RSS ([\d.]+)x \(target: within 1.5x\) (met|NOT met)$"
    ratio = re.search(summary, out, re.M)
    assert ratio, out
    assert abs(float(ratio.group(2)) - float(rows[1][2]) / float(rows[0][2])) < 0.02


def test_the_queues_bench_runs_briefly_and_prints_one_row_per_case():
    out = run_bench("-m", "bench.queues", "--subscribers", "3", "--messages", "20", "--cases", "none,offline")
    rows = re.findall(r"^(today|bounded) \S+\s+(none|offline)\s+(?:[\d.]+\s+){4}([\d.]+) ", out, re.M)
    assert [(s, c) for s, c, _ in rows] == [(s, c) for s in ("today", "bounded") for c in ("none", "offline")]
    assert all(float(burst) > 0 for _, _, burst in rows), out


def test_the_statement_bench_prints_each_case_beside_the_floor():
    out = run_bench("bench/statement.py", "--trades", "20")
    for row in ("whole chain", "floor (open each)", "last block", "empty period"):
        assert re.search(rf"^\s+{re.escape(row)}\s+\d+\.\d ms$", out, re.M), (row, out)
