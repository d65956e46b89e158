"""`spb-deploy demo`: a three-meter community trading on this machine, end to end, with either broker:
direct CTPs, then one market interval, every trade settled against the producer's proved export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pytest

from tests.support.bus import REPO, child_env, wait_for

METERS = ("m0001", "m0002", "m0003")


def run_demo(community, *args: str, trades: int = 2) -> tuple[subprocess.CompletedProcess, str]:
    """One bounded headless demo run; (result, a report to show when an assertion fails)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "demo",
            "--headless",
            "--dir",
            str(community),
            "--seconds",
            "240",
            "--trades",
            str(trades),
            "--reading-s",
            "0.5",
            *args,
        ],
        cwd=REPO,
        env={**child_env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=360,
    )
    return result, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture(scope="module")
def mosquitto_run(tmp_path_factory):
    """One tour with Mosquitto, 3 trades: checked below, then run again by the rerun test
    (a demo run is about a minute: CI keeps to its budget by sharing it)."""
    community = tmp_path_factory.mktemp("tour") / "demo"
    result, report = run_demo(community, trades=3)
    return community, result, report


def test_demo_trades_as_planned_and_exits_0_with_mosquitto(mosquitto_run):
    check_tour(*mosquitto_run, embedded=False, trades=3)


def test_demo_trades_as_planned_and_exits_0_with_the_embedded_amqtt(tmp_path):
    community = tmp_path / "demo"
    check_tour(community, *run_demo(community, "--embedded", trades=2), embedded=True, trades=2)


def check_tour(community, result: subprocess.CompletedProcess, report: str, *, embedded: bool, trades: int) -> None:
    """The meters come online, verify each other's births (not readings: decision 0012), fetch
    CoEs from each other, the monitor verifies every meter's readings, and the consumers'
    trades end as planned: all settled by the meters' own ERCs but the last, which asks for
    more than can arrive before it expires and is refunded. The producer's meter proves its
    export interval by interval; then it asks and both consumers bid for one interval, which
    clears both products as deploy/demo.py's MARKET plans, and the fills settle too. Every
    validator's chain passes its audit, and they end at one head."""
    out = result.stdout
    flat = " ".join(out.split())  # the console wraps long lines at its width

    assert result.returncode == 0, report
    assert "demo ok" in out, report
    assert ("broker embedded" if embedded else "broker mosquitto") in out, report
    assert "meters verify each other's births, not readings: this monitor verifies every reading" in flat, report
    # The only rejection is `oversold`: an ERC that came before its seller's export record
    # for the interval, sent again after it (docs/PROTOCOL.md §9.4).
    rejections = [line for line in out.splitlines() if "rejected" in line]
    assert all(line.rstrip().endswith(": oversold") for line in rejections), report
    assert (community / "community.toml").is_file()
    # four validators by default: each says offline at the one head every audit agrees on
    market = re.search(
        r"market: interval #\d+ cleared: green 3 × 6 Wh, open 2 × 4 Wh, 2 fill\(s\); fill trades: (\w+… \w+, \w+… \w+)",
        flat,
    )
    assert market and re.fullmatch(r"\w+… settled, \w+… settled", market.group(1)), report
    summary = re.search(
        rf"ledger: {trades - 1} settled, 1 refunded, \d+ blocks, 0 rejects, \d+ oversold \(sent again\), "
        rf"state v0 offline (\d+), v1 offline (\d+), v2 offline (\d+), v3 offline (\d+); "
        rf"audit ok on 4 validator\(s\), one head: height (\d+), {trades - 1 + 2} trades",
        flat,
    )
    assert summary and len(set(summary.groups())) == 1, report
    ended = re.findall(r"│ \w+… │ (m000\d) │ \d+\s+│ \d+\s+│ (\w+)\s+│ (\w+)\s+│", out)
    assert len(ended) == trades and all(expected == got for _, expected, got in ended), report
    assert re.search(r"◆ ledger\s+status\s+CTP \w+… settled in block #\d+\s+validator signature ✓", out), report
    assert re.search(r"m000[23] confirms \d+ Wh for CTP \w+: ERC", out), report
    assert re.search(r"◆ export\s+m0001 proves \d+ Wh exported in #\d+", out), report
    assert re.search(r"◆ market\s+#\d+ bid\s+\w+… 6 Wh at 4: filled, 6 Wh filled", out), report
    for meter in METERS:
        assert re.search(rf"★ {meter}\s+birth\s+fw \S+, boot 1;", out), report
        seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", out, re.M)]
        assert len(seqs) >= 2 and seqs == sorted(set(seqs)), report
        # Peers' births (their CoE witnesses), never their readings: those only the monitor verifies.
        assert re.search(rf"{meter} verified birth of m000[123] ", out), report
        assert not re.search(rf"{meter} verified reading", out), report
        assert re.search(rf"{meter} got the CoE of key batch #1", out), report
        assert re.search(rf"● {meter}\s+state\s+online", out), report
        assert re.search(rf"● {meter}\s+state\s+offline", out), report
        assert "█" in (community / "meters" / meter / "display.ans").read_text(), "the terminal Sense HAT drew"


def test_a_rerun_judges_itself_only_on_live_messages(mosquitto_run):
    """The broker keeps the first run's retained births and `offline` states; the second run
    shows them as such, passes on its own live births (boot 2), and keys and seqs carry on."""
    community, first, report = mosquitto_run
    assert first.returncode == 0, report
    second, report = run_demo(community)
    assert second.returncode == 0 and "demo ok" in second.stdout, report
    assert "(retained, from before)" in second.stdout, report
    for meter in METERS:
        assert re.search(rf"★ {meter}\s+birth\s+fw \S+, boot 2;", second.stdout), report
        first_seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", first.stdout, re.M)]
        second_seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", second.stdout, re.M)]
        assert min(second_seqs) > max(first_seqs), report


def test_a_streets_day_trades_on_its_own_and_reports_the_table_and_the_plot(tmp_path):
    """`demo --day` (make demo's default), shortened to 8 intervals: six meters place every
    order themselves, the intervals clear, every fill ends settled or refunded as the energy
    allowed, the audits pass, and the day ends as a table per household and a PNG plot.
    While it runs, the dashboard and the metrics it prints are where it says."""
    community = tmp_path / "street"
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "deploy.cli", "demo", "--day", "--headless", "--dir", str(community),
                "--intervals", "8", "--seconds", "240",
            ],
            cwd=REPO,
            env={**child_env(), "COLUMNS": "200"},
            stdout=out_file,
            stderr=err_file,
            text=True,
        )  # fmt: skip
    try:
        watched = watch_the_monitors(stdout, community)
        proc.wait(360)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout.read_text(), stderr.read_text())
    assert watched["validators"] == 4 and watched["meters"] == 6, watched
    out = result.stdout
    report = f"exit {result.returncode}\nstdout:\n{out}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert "demo ok" in out and "The street's day, per household" in out, report
    assert len(re.findall(r"agent: (ask|bid) \d+ Wh", out)) >= 8, report  # nobody typed an order
    assert re.search(r"\d\d:\d\d  #\d+  cleared: ", out), report
    fills = re.search(
        r"market: (\d+) fills in the day: (\d+) settled, (\d+) refunded \((\d+) late\), (\d+) unfinished", out
    )
    assert fills, report
    total, settled, refunded, late, unfinished = map(int, fills.groups())
    assert settled >= 1 and settled + refunded == total and late == unfinished == 0, report
    for meter in ("m0001", "m0002", "m0003", "m0004", "m0005", "m0006"):
        assert re.search(rf"│ {meter} ", out), report
    assert (community / "day.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), report
    assert "audit ok on 4 validator(s)" in out, report


def watch_the_monitors(stdout, community) -> dict[str, int]:
    """Read the dashboard's and the exporter's addresses off the demo's output, then wait until
    the exporter tells of four validators past block 1 and six meters online, and the
    dashboard serves its page and a snapshot naming the six meters."""
    found: dict[str, str] = {}

    def addresses() -> bool:
        text = stdout.read_text()
        for name, pattern in (
            ("dashboard", r"dashboard\s+(http://\S+/)"),
            ("metrics", r"metrics\s+(http://\S+/metrics)"),
        ):
            match = re.search(pattern, text)
            if match:
                found[name] = match.group(1)
        return len(found) == 2

    wait_for(addresses, 60, lambda: f"the demo to print its monitors: {stdout.read_text()}")

    def counts() -> dict[str, int] | None:
        try:
            with urllib.request.urlopen(found["metrics"], timeout=5) as response:
                text = response.read().decode()
            with urllib.request.urlopen(found["dashboard"], timeout=5) as response:
                page = response.read().decode()
            with urllib.request.urlopen(found["dashboard"] + "api/snapshot", timeout=5) as response:
                snapshot = json.loads(response.read())
        except OSError:
            return None  # still starting
        heights = re.findall(r'^spb_validator_height\{validator="v\d"\} (\d+)', text, re.M)
        online = re.findall(r'^spb_meter_online\{meter="m\d+"\} 1\.0', text, re.M)
        meters = {m["meter"] for m in snapshot["meters"]}
        if "<html" in page.lower() and len(online) == 6 and len(meters) == 6 and sum(int(h) > 1 for h in heights) == 4:
            return {"validators": len(heights), "meters": len(online)}
        return None

    watched = wait_for(counts, 120, lambda: f"the monitors to tell of the street: {stdout.read_text()}", interval=0.5)
    assert watched is not None
    return watched
