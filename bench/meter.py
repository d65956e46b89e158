"""The budget of one meter process: CPU seconds per hour and peak RSS of `spb-meter run`.

One meter (`python -m edge.cli run --adc fake --fake-w 1500 --sample-hz 10 --reading-s 10`:
10 Hz sampling through the fake MCP3008 on gpiozero's mock SPI, a signed reading every
10 s) runs against a real Mosquitto on a free loopback port, in a provisioned community of
2 meters. The second meter runs too, so the first has a peer: it gets its CoE from it and
verifies its births and readings. Only the first is measured, from /proc/<pid>/stat (CPU)
and /proc/<pid>/status (VmHWM, the peak RSS), over a window after a warm-up; its start-up
(imports, ADC, connecting) is reported separately, and so is how fast its RSS grows in the
window, since a peak after a minute says little about a process that keeps growing.
Targets (issue, this machine as a proxy for a Pi 3 B+): under 2% of one core (72 CPU s per
hour) and under 60 MB (10^6 bytes) peak RSS.

Two phases, one after the other, each on a fresh broker and community so neither sees the
other's retained messages: first the meter alone (no market, the figures this bench always
printed), then the same meter trading by itself (issue 15): a market of --interval-s
intervals with one validator, both meters' policies on auto, so the measured meter bids its
forecast shortfall every interval and the peer asks its surplus (bench/meter_market.py). Its
agent places nothing before it measured an interval whole, so the second warm-up lasts at
least until its first order. The second phase's figures are printed beside the first's: the
difference is what the agent and the market cost the meter. The orders it placed, and the
states the ledger gave them, are read from its store after it stopped (`sent`: placed so
late in the window that the ledger's answer had not reached it yet).

The bounds measured in the same run: a bare python importing the same modules (start-up CPU
and RSS that no meter code can go below), and the fake ADC's own cost, sense() timed in
this process (two software-SPI conversions per sample), which a Pi's hardware SPI does not pay.

Run: `make bench` or `python bench/meter.py [--seconds S] [--warmup S] [--interval-s S]`
(about 2 x (S + warm-up) + the agent's first interval or two: under 3 minutes by default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from meter_market import (
    BUY_MAX_PRICE,
    BUYER,
    HOST,
    PLACED,
    REPO,
    SELLER,
    Bench,
    Child,
    describe,
    market_community,
    placed_orders,
    start_validator,
)

from broker.clock import wall_ms
from broker.runtime import Mosquitto, free_port, wait_or_kill
from deploy.provision import provision
from edge.store import OrderRow

SAMPLE_HZ, READING_S, FAKE_W = 10, 10, 1500
CPU_BUDGET_S_PER_H = 72.0  # 2% of one core
RSS_BUDGET_MB = 60.0
MB = 1_000_000
HZ = os.sysconf("SC_CLK_TCK")
IMPORTS = "import edge.cli, edge.display_drivers, edge.sensing, edge.meter"  # what `spb-meter run` imports
ONLINE = "online, birth sent"


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process so far (threads that ended included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def thread_ns(pid: int) -> dict[int, int]:
    """ns on a CPU so far of each live thread (schedstat), by thread id: only to split the
    process's CPU between the sampling loop (the main thread) and the rest (paho, display)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except OSError:  # ended meanwhile
            pass
    return out


def snapshot(pid: int) -> tuple[float, dict[int, int], int, float, int]:
    """What a window's start and end read: CPU s, per-thread ns, RSS now, monotonic s, wall ms."""
    return cpu_s(pid), thread_ns(pid), status_bytes(pid, "VmRSS"), time.monotonic(), wall_ms()


def status_bytes(pid: int, key: str = "VmHWM") -> int:
    """VmHWM (peak RSS) or VmRSS (RSS now) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise Bench(f"no {key} in /proc/{pid}/status")


def bare_python() -> tuple[float, int]:
    """CPU s and peak RSS of a python that imports what the meter imports, then idles."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"{IMPORTS}; import sys; print('ready', flush=True); sys.stdin.read()"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if child.stdout.readline().strip() != "ready":
            raise Bench(f"the bare python importing the meter's modules failed ({child.wait()})")
        return cpu_s(child.pid), status_bytes(child.pid)
    finally:
        child.stdin.close()
        child.stdout.close()
        wait_or_kill(child, 10)


def fake_adc_per_sample(seconds: float) -> tuple[float, float]:
    """CPU s of one sense() of the fake ADC (set the volts, read both channels), in this
    process, and the bytes of Python objects each sample leaves allocated."""
    from edge.config import MeterConfig
    from edge.sampling import PowerProfile
    from edge.sensing import open_sensing

    sense = open_sensing("fake", MeterConfig(), PowerProfile.parse(str(FAKE_W)))
    sense(0)
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds or done < 10:
        for _ in range(10):
            sense(done * 100)
        done += 10
    tracemalloc.start()  # after the timing: it slows allocation down
    for i in range(100):
        sense(i * 100)
    kept = tracemalloc.get_traced_memory()[0] / 100
    tracemalloc.stop()
    return elapsed / done, kept


@dataclass(frozen=True)
class Run:
    """One measured meter's figures: start-up until online, then a window after a warm-up."""

    startup: float  # CPU s until online
    warmup: float  # s from online to the window
    window: float  # s
    steady: float  # CPU s per hour in the window
    main_thread: float  # ... of which the sampling loop's
    rss: int  # VmHWM at the end of the window, bytes
    growth: float  # VmRSS over the window, MB per hour
    window_ms: tuple[int, int]  # the window in wall ms: orders placed in it
    log: str


def meter(root: Path, name: str, port: int, watts: int) -> Child:
    """`spb-meter run` of a provisioned meter with the emulated ADC; online, birth sent."""
    child = Child(
        name,
        [
            "edge.cli",
            "run",
            "--state-dir",
            str(root / "community" / "meters" / name),
            "--broker",
            f"{HOST}:{port}",
            "--adc",
            "fake",
            "--fake-w",
            str(watts),
            "--sample-hz",
            str(SAMPLE_HZ),
            "--reading-s",
            str(READING_S),
        ],
        root / f"{name}.log",
    )
    child.wait_for(ONLINE, 30, "birth (not online)")
    return child


def phase(root: Path, args: argparse.Namespace, market: bool) -> tuple[Run, list[OrderRow], list[OrderRow]]:
    """Measure the meter (m0001) with its peer on a fresh broker; with `market`, also a
    validator, and both trading by themselves. The run's figures, and the measured meter's
    orders placed in the window and in all."""
    children: list[Child] = []
    broker = Mosquitto()
    try:
        if market:
            market_community(root / "community", args.interval_s)
        else:
            provision(root / "community", meters=2, accounts=None, validators=1, now_ms=wall_ms())
        broker.start(free_port(), root / "mosquitto")
        if market:
            children.append(start_validator(root / "community", broker.port, root / "v0.log"))
        # The peer first, so its retained birth and `online` are there when the measured meter connects.
        children.append(meter(root, SELLER, broker.port, -FAKE_W))
        measured = meter(root, BUYER, broker.port, FAKE_W)
        children.append(measured)
        pid, online = measured.pid, time.monotonic()
        startup = cpu_s(pid)
        time.sleep(args.warmup)
        if market:  # it places nothing before it measured an interval whole: wait for its first order
            measured.wait_for(PLACED, 4 * args.interval_s + 30, "order placed by its agent")
        for child in children:
            child.check_alive()
        cpu0, threads0, rss0, t0, w0 = snapshot(pid)
        time.sleep(args.seconds)
        for child in children:
            child.check_alive()
        cpu1, threads1, rss1, t1, w1 = snapshot(pid)
        rss, log = status_bytes(pid), measured.text()
        if not broker.running():
            raise Bench(f"mosquitto died: {broker.exit_report()}")
    finally:
        for child in reversed(children):  # the meters before the validator they send to
            child.stop()
        broker.stop()
    per_hour = 3600 / (t1 - t0)
    steady = (cpu1 - cpu0) * per_hour
    ran = {tid: ns - threads0[tid] for tid, ns in threads1.items() if tid in threads0}
    main_thread = steady * ran.get(pid, 0) / max(1, sum(ran.values()))
    run = Run(startup, t0 - online, t1 - t0, steady, main_thread, rss, (rss1 - rss0) / MB * per_hour, (w0, w1), log)
    if not market:
        return run, [], []
    state_dir = root / "community" / "meters" / BUYER
    return run, placed_orders(state_dir, w0, w1), placed_orders(state_dir, 0, w1)


def budget_lines(label: str, run: Run) -> None:
    print(
        f"cpu{label} {run.steady / CPU_BUDGET_S_PER_H:.2f} of budget  "
        f"(< {CPU_BUDGET_S_PER_H:.0f} CPU s per hour = 2% of one core)"
    )
    reached = (
        f"; growing {run.growth:.0f} MB/h, it reaches the budget in "
        f"{(RSS_BUDGET_MB - run.rss / MB) / run.growth * 60:.0f} min"
        if run.growth > 1 and run.rss / MB < RSS_BUDGET_MB
        else ""
    )
    print(
        f"rss{label} {run.rss / MB / RSS_BUDGET_MB:.2f} of budget  (< {RSS_BUDGET_MB:.0f} MB, the peak so far{reached})"
    )


def report_alone(run: Run, args: argparse.Namespace, bare: tuple[float, int], adc: tuple[float, float]) -> None:
    """The meter with its peer and no market: the figures this bench has always printed."""
    (bare_cpu, bare_rss), (adc_sample_s, adc_sample_bytes) = bare, adc
    adc_s_per_h, adc_mb_per_hour = adc_sample_s * SAMPLE_HZ * 3600, adc_sample_bytes * SAMPLE_HZ * 3600 / MB
    print(
        f"one meter process: spb-meter run --adc fake --fake-w {FAKE_W} --sample-hz {SAMPLE_HZ} "
        f"--reading-s {READING_S}, Mosquitto and a peer meter on this machine ({os.cpu_count()} cores); "
        f"{run.window:.0f} s window after a {run.warmup:.0f} s warm-up; CPU in {1000 / HZ:.0f} ms ticks"
    )
    print(
        f"{'start-up CPU (until online)':36}{run.startup:8.2f} s      a bare python importing the same modules: "
        f"{bare_cpu:.2f} s"
    )
    print(f"{'steady CPU':36}{run.steady:8.1f} s/h    {run.steady / 36:.2f}% of one core")
    print(
        f"{'  sampling loop (main thread)':36}{run.main_thread:8.1f} s/h    other threads (paho, display): "
        f"{run.steady - run.main_thread:.1f} s/h"
    )
    print(
        f"{'  fake ADC alone (in this process)':36}{adc_s_per_h:8.1f} s/h    {adc_sample_s * 1e6:.0f} us per sample "
        f"(2 software-SPI reads) at {SAMPLE_HZ} Hz; a Pi's hardware SPI (spidev) does not pay this"
    )
    print(f"{'peak RSS (VmHWM)':36}{run.rss / MB:8.1f} MB     the bare python: {bare_rss / MB:.1f} MB")
    print(
        f"{'  RSS growth in the window':36}{run.growth:8.1f} MB/h   fake ADC alone (in this process) keeps "
        f"{adc_sample_bytes / 1000:.1f} kB per sample: {adc_mb_per_hour:.1f} MB/h"
    )
    print(
        f"peer: CoE from {SELLER} {'yes' if 'got the CoE' in run.log else 'not yet'}; "
        f"verified the birth of {SELLER}: {'yes' if f'verified birth of {SELLER}' in run.log else 'not yet'}"
    )
    budget_lines("", run)


def report_agent(
    alone: Run,
    agent: Run,
    window: list[OrderRow],
    placed: list[OrderRow],
    args: argparse.Namespace,
    bare: tuple[float, int],
    adc_s_per_h: float,
) -> None:
    """The same meter trading by itself, beside the figures without a market: the difference is the agent's."""
    print(
        f"with the agent: the same meter on a market of {args.interval_s} s intervals, policy mode=auto "
        f"(bids its forecast shortfall at {BUY_MAX_PRICE} per Wh), the peer asking its surplus as solar, one "
        f"validator clearing; {agent.window:.0f} s window after its first order ({agent.warmup:.0f} s after online)"
    )
    print(f"{'agent orders placed in the window':36}{len(window):8d}         {describe(window)}")
    print(
        f"{'  in all, since it started':36}{len(placed):8d}         {describe(placed)}; fills bought "
        f"{agent.log.count(' bought ')}, ERCs sent {agent.log.count(' confirms ')}"
    )
    print(f"{'':36}{'no market':>10}{'agent':>10}{'agent-no':>10}{'bound':>10}{'budget':>10}")
    for label, a, b, bound, budget in (
        ("steady CPU (s/h)", alone.steady, agent.steady, f"{adc_s_per_h:.1f}", f"{CPU_BUDGET_S_PER_H:.1f}"),
        ("  % of one core", alone.steady / 36, agent.steady / 36, f"{adc_s_per_h / 36:.2f}", "2.00"),
        ("peak RSS (VmHWM, MB)", alone.rss / MB, agent.rss / MB, f"{bare[1] / MB:.1f}", f"{RSS_BUDGET_MB:.1f}"),
        ("  RSS growth in the window (MB/h)", alone.growth, agent.growth, "", ""),
        ("start-up CPU (until online, s)", alone.startup, agent.startup, f"{bare[0]:.2f}", ""),
    ):
        digits = 2 if "%" in label or "start-up" in label else 1
        line = f"{label:36}{a:10.{digits}f}{b:10.{digits}f}{b - a:+10.{digits}f}{bound:>10}{budget:>10}"
        print(line.rstrip())
    print(
        "  bound: CPU, the fake ADC alone (in this process); start-up and RSS, a bare python importing the same modules"
    )
    budget_lines(" with the agent", agent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="measurement window of each phase after its warm-up (default 60)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds after the meter is online before measuring: key batch, CoE, first readings (default 10); "
        "with the agent, also until its first order",
    )
    parser.add_argument(
        "--interval-s", type=int, default=10, help="the market's interval in the agent phase (default 10)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.interval_s < 2:
        parser.error("--seconds must be positive, --warmup not negative and --interval-s at least 2")

    try:
        bare = bare_python()
        adc = fake_adc_per_sample(min(1.0, args.seconds))
        with tempfile.TemporaryDirectory(prefix="spb-bench-meter-") as tmp:
            alone, _, _ = phase(Path(tmp), args, market=False)
        with tempfile.TemporaryDirectory(prefix="spb-bench-meter-agent-") as tmp:
            agent, window, placed = phase(Path(tmp), args, market=True)
    except Bench as exc:
        print(f"meter: {exc}", file=sys.stderr)
        return 1
    report_alone(alone, args, bare, adc)
    print()
    report_agent(alone, agent, window, placed, args, bare, adc[0] * SAMPLE_HZ * 3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
