"""The budget of one meter process: CPU seconds per hour and peak RSS of `spb-meter run`.

One meter (`python -m edge.cli run --adc fake --fake-w 1500 --sample-hz 10 --reading-s 10`:
10 Hz sampling through the fake MCP3008 on gpiozero's mock SPI, a signed reading every
10 s) runs against a real Mosquitto on a free loopback port, in a provisioned community of
2 meters. The second meter runs too, so the first has a peer: it gets its CoE from it and
verifies its births and readings. Only the first is measured, from /proc/<pid>/stat (CPU)
and /proc/<pid>/status (VmHWM, the peak RSS), over a window after a warm-up; its start-up
(imports, ADC, connecting) is reported separately, and so is how fast its RSS grows in the
window, since a peak after a minute says little about a process that keeps growing. Targets (issue, this machine as
a proxy for a Pi 3 B+): under 2% of one core (72 CPU s per hour) and under 60 MB (10^6 bytes) peak RSS.

The bounds measured in the same run: a bare python importing the same modules (start-up CPU
and RSS that no meter code can go below), and the fake ADC's own cost, sense() timed in
this process (two software-SPI conversions per sample), which a Pi's hardware SPI does not pay.

Run: `make bench` or `python bench/meter.py [--seconds S] [--warmup S]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from broker.clock import wall_ms
from broker.runtime import Mosquitto, free_port, wait_or_kill
from deploy.provision import provision

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SAMPLE_HZ, READING_S, FAKE_W = 10, 10, 1500
CPU_BUDGET_S_PER_H = 72.0  # 2% of one core
RSS_BUDGET_MB = 60.0
MB = 1_000_000
HZ = os.sysconf("SC_CLK_TCK")
IMPORTS = "import edge.cli, edge.display_drivers, edge.sensing, edge.meter"  # what `spb-meter run` imports
ONLINE = "online, birth sent"


class Bench(Exception):
    """The run could not finish (a process died or did not come up)."""


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


def status_bytes(pid: int, key: str = "VmHWM") -> int:
    """VmHWM (peak RSS) or VmRSS (RSS now) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise Bench(f"no {key} in /proc/{pid}/status")


class Meter:
    """`spb-meter run` of one state dir as a subprocess, its output in a log file."""

    def __init__(self, state_dir: Path, port: int, watts: int, log: Path):
        self.name, self.log = state_dir.name, log
        command = [
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--state-dir",
            str(state_dir),
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
        ]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.text().splitlines()[-20:])
            raise Bench(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def wait_online(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while ONLINE not in self.text():
            self.check_alive()
            if time.monotonic() > deadline:
                raise Bench(f"{self.name} did not come online in {timeout:.0f} s:\n{self.text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if not wait_or_kill(self.process, 15):
                print(f"meter: {self.name} ignored SIGTERM for 15 s; killed it", file=sys.stderr)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window after the warm-up (default 60)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds after the meter is online before measuring: key batch, CoE, first readings (default 10)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")

    meters: list[Meter] = []
    broker = Mosquitto()
    tmp = tempfile.TemporaryDirectory(prefix="spb-bench-meter-")
    try:
        bare_cpu, bare_rss = bare_python()
        adc_sample_s, adc_sample_bytes = fake_adc_per_sample(min(1.0, args.seconds))
        root = Path(tmp.name)
        provision(root / "community", meters=2, accounts=None, validators=1, now_ms=wall_ms())
        broker.start(free_port(), root / "mosquitto")
        # The peer first, so its retained birth and `online` are there when the measured meter connects.
        meters.append(Meter(root / "community" / "meters" / "m0002", broker.port, -FAKE_W, root / "m0002.log"))
        meters[0].wait_online()
        meter = Meter(root / "community" / "meters" / "m0001", broker.port, FAKE_W, root / "m0001.log")
        meters.append(meter)
        pid = meter.process.pid
        meter.wait_online()
        startup = cpu_s(pid)
        time.sleep(args.warmup)
        meter.check_alive()
        cpu0, threads0, rss0, t0 = cpu_s(pid), thread_ns(pid), status_bytes(pid, "VmRSS"), time.monotonic()
        time.sleep(args.seconds)
        meter.check_alive()
        cpu1, threads1, rss1, t1 = cpu_s(pid), thread_ns(pid), status_bytes(pid, "VmRSS"), time.monotonic()
        rss = status_bytes(pid)
        if not broker.running():
            raise Bench(f"mosquitto died: {broker.exit_report()}")
        log = meter.text()
    except Bench as exc:
        print(f"meter: {exc}", file=sys.stderr)
        return 1
    finally:
        for m in meters:
            m.stop()
        broker.stop()
        tmp.cleanup()

    per_hour = 3600 / (t1 - t0)
    steady = (cpu1 - cpu0) * per_hour
    ran = {tid: ns - threads0[tid] for tid, ns in threads1.items() if tid in threads0}
    main_thread = steady * ran.get(pid, 0) / max(1, sum(ran.values()))
    adc, adc_mb_per_hour = adc_sample_s * SAMPLE_HZ * 3600, adc_sample_bytes * SAMPLE_HZ * 3600 / MB
    growth = (rss1 - rss0) / MB * per_hour  # MB per hour
    print(
        f"one meter process: spb-meter run --adc fake --fake-w {FAKE_W} --sample-hz {SAMPLE_HZ} "
        f"--reading-s {READING_S}, Mosquitto and a peer meter on this machine ({os.cpu_count()} cores); "
        f"{t1 - t0:.0f} s window after a {args.warmup:.0f} s warm-up; CPU in {1000 / HZ:.0f} ms ticks"
    )
    print(
        f"{'start-up CPU (until online)':36}{startup:8.2f} s      a bare python importing the same modules: "
        f"{bare_cpu:.2f} s"
    )
    print(f"{'steady CPU':36}{steady:8.1f} s/h    {steady / 36:.2f}% of one core")
    print(
        f"{'  sampling loop (main thread)':36}{main_thread:8.1f} s/h    other threads (paho, display): "
        f"{steady - main_thread:.1f} s/h"
    )
    print(
        f"{'  fake ADC alone (in this process)':36}{adc:8.1f} s/h    {adc_sample_s * 1e6:.0f} us per sample "
        f"(2 software-SPI reads) at {SAMPLE_HZ} Hz; a Pi's hardware SPI (spidev) does not pay this"
    )
    print(f"{'peak RSS (VmHWM)':36}{rss / MB:8.1f} MB     the bare python: {bare_rss / MB:.1f} MB")
    print(
        f"{'  RSS growth in the window':36}{growth:8.1f} MB/h   fake ADC alone (in this process) keeps "
        f"{adc_sample_bytes / 1000:.1f} kB per sample: {adc_mb_per_hour:.1f} MB/h"
    )
    print(
        f"peer: CoE from m0002 {'yes' if 'got the CoE' in log else 'not yet'}; "
        f"verified {log.count('verified reading #')} reading(s) of m0002"
    )
    print(
        f"cpu {steady / CPU_BUDGET_S_PER_H:.2f} of budget  (< {CPU_BUDGET_S_PER_H:.0f} CPU s per hour = 2% of one core)"
    )
    reached = (
        f"; growing {growth:.0f} MB/h, it reaches the budget in {(RSS_BUDGET_MB - rss / MB) / growth * 60:.0f} min"
        if growth > 1 and rss / MB < RSS_BUDGET_MB
        else ""
    )
    print(f"rss {rss / MB / RSS_BUDGET_MB:.2f} of budget  (< {RSS_BUDGET_MB:.0f} MB, the peak so far{reached})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
