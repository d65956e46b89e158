"""Four `spb-ledger run --metrics-port 0` processes on a real Mosquitto: what their
/metrics say agrees with their databases and with what they sent on the bus, through a load,
a stopped validator (round changes) and its return."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger import consensus as c
from tests.support.bus import wait_for
from tests.support.consensus import Validators
from tests.support.ledger import wait_online
from wire import topics

CATCH_UPS = "spb_ledger_catch_ups_total"
BOUND = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


class Metered(Validators):
    """Validators that serve metrics on free ports, each read from its log."""

    def start(self, i: int) -> None:
        mark = len(self.inbox.messages)
        self.procs.start(
            f"v{i}",
            "ledger.cli",
            "run",
            self.root,
            "--broker",
            f"127.0.0.1:{self.port}",
            "--validator",
            i,
            "--metrics-port",
            0,
        )
        self.processes[i] = self.procs.procs[-1]
        wait_online(self.inbox, mark, i, self.procs.logs)

    def metrics_port(self, i: int) -> int:
        """The port validator i bound at its last start (a restart appends to its log)."""
        return int(BOUND.findall((self.procs.log_dir / f"v{i}.log").read_text())[-1])

    def scrape(self, i: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port(i)}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def sent_round_changes(self, i: int) -> int:
        """ROUND_CHANGE messages validator i sent (the inbox saw all since before any start)."""
        validators = self.genesis().validators
        count = 0
        for t, p, _ in self.inbox.messages:
            if t == topics.CONSENSUS_ALL:
                message = c.open_signed(p, validators)
                count += message.kind == c.ROUND_CHANGE and message.sender == i
        return count


def value(got: dict, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def blocks(got: dict) -> float:
    return sum(value(got, "spb_ledger_blocks_total", how=how) for how in ("proposed", "caught_up"))


@pytest.fixture
def metered(tmp_path, mosquitto, make_client):
    v = Metered(tmp_path, mosquitto.port, make_client, 120)
    yield v
    v.close()


def idle(v: Metered, i: int, height: int) -> dict:
    """Validator i's metrics once it is at `height` with nothing pending and nothing to publish."""
    return wait_for(
        lambda: (
            (got := v.scrape(i))
            and value(got, "spb_ledger_height") == height
            and value(got, "spb_ledger_pending_transactions") == 0
            and value(got, "spb_ledger_outbox_depth") == 0
            and got
        ),
        30,
        lambda: f"validator {i} idle at height {height}; scrape: {v.scrape(i)}",
    )


def test_metrics_agree_with_the_store_and_the_bus(metered):
    v = metered
    for i in range(4):
        v.start(i)
    genesis = v.genesis().hash.hex()
    first, second, last = v.trades[:40], v.trades[40:80], v.trades[80:]
    v.publish(first)
    v.wait_settled(len(first))
    height = v.wait_heads_agree()[0]
    for i in range(4):
        got = idle(v, i, height)
        store = v.store(i)
        assert value(got, "spb_ledger_block_time_seconds") == store.block_time(height) / 1000
        store.close()
        assert value(got, "spb_ledger_validator_info", validator=str(i), genesis=genesis) == 1
        assert blocks(got) == height, "from an empty ledger, every block was decided or caught up here"
        assert value(got, "spb_ledger_block_interval_seconds_count") == height - 1
        # Every CTP and ERC was checked at least once: at the door, or in a block's replay.
        assert value(got, "spb_ledger_transaction_verify_seconds_count") >= 2 * len(first)
        assert value(got, "spb_ledger_puback_seconds_count") > 0

    # Validator 3 stops; the others go on until they decided a height whose round-0
    # proposer is 3: each of them left round 0 of it, and says so on the bus and in its metrics.
    down_from, sent = height, len(first)
    target = down_from + 1 + (3 - (down_from + 1)) % 4  # the first such height
    v.stop(3)
    for wave in range(0, len(second), 10):
        if height >= target:
            break
        v.publish(second[wave : wave + 10])
        sent += 10
        v.wait_settled(sent)
        height = v.wait_heads_agree(range(3))[0]
    assert height >= target, f"four waves made only {height - down_from} blocks"
    for i in range(3):
        assert blocks(idle(v, i, height)) == height
        wait_for(
            lambda i=i: value(v.scrape(i), "spb_ledger_round_changes_total") == v.sent_round_changes(i) > 0,
            30,
            lambda i=i: (
                f"v{i}: {value(v.scrape(i), 'spb_ledger_round_changes_total')} round changes "
                f"in its metrics, {v.sent_round_changes(i)} on the bus"
            ),
        )

    # Back, it commits what it missed, then takes part again. Whether a missed block comes
    # from the rounds' messages the broker kept for it or from a peer's catch-up answer is
    # the race's to decide; each is counted once, and only answers that brought blocks count.
    v.start(3)
    got = idle(v, 3, height)
    assert blocks(got) == height - down_from
    caught_up, catch_ups = value(got, "spb_ledger_blocks_total", how="caught_up"), value(got, CATCH_UPS)
    assert (catch_ups > 0) == (caught_up > 0) and catch_ups <= caught_up
    v.publish(last)
    v.wait_settled(sent + len(last))
    final = v.wait_heads_agree()[0]
    assert final > height
    got = idle(v, 3, final)
    assert blocks(got) == final - down_from, "since its restart, each block it committed is counted once"
    v.stop_all()
    assert v.cli("head", str(v.root), "--validator", "3").startswith(f"height {final} ")
