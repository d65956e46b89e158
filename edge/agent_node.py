"""The trading agent on the meter's loop: measures each interval's net energy, and a tenth
of an interval (at least 3 s, at most half) before the next gate places what
edge.agent.plan says, like `spb-meter ask|bid`.

Thin on purpose: the decisions are edge.agent's and edge.forecast's (pure, tested against
generated inputs); this adapter only feeds them and writes their orders through
edge.orders, so each order is recorded and queued in one transaction and the outbox sends it
(a reboot or an outage loses none and sends none twice).

- Idempotent per interval: `plan` places nothing for an interval that already has an order in
  the store, and the store is read just before placing; a restart inside the window finds the
  order placed before it. In memory, an interval is planned once.
- The policy is read from config.toml at every plan: a change applies from the next interval.
  A policy made bad by hand is logged and nothing is placed (the meter refused it at start).
- The forecast's history is in memory, from the totals at each interval boundary as the loop
  sees them (within a housekeeping period, ~1 s); an interval the meter did not see whole
  (the one it booted in) is not recorded. The interval under way, 90% measured when the
  plan is made, counts as the latest, extrapolated to its whole length (`_with_current`).
  After a restart the agent therefore places nothing
  until an interval has been measured whole: it errs towards not trading.
- A bid is bounded by the daily budget left and by the account's free balance, from the
  newest account status the ledger published (decision 0010, kept in the store by
  edge.market_node) less the escrow of our bids it has not answered yet (edge.account
  `spendable`). Before the meter ever got a status (a new meter, the bus not reached yet) the
  budget alone bounds it: a bid above the free balance is then rejected
  `insufficient-funds` by the ledger and changes nothing (shown by `spb-meter orders`), and
  the agent does not retry that interval.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nacl.signing import SigningKey

from edge import agent, forecast, market, orders, policy
from edge.account import spendable
from edge.config import CONFIG_NAME, MeterConfig
from edge.energy import Totals
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from edge.tx import TradeError
from wire.messages import Side

log = logging.getLogger("spb.meter")
LEAD = 10  # plan at the gate minus interval / LEAD ...
MIN_LEAD_MS = 3000  # ... but at least this early: housekeeping runs about once a second, and may run late


class AgentNode:
    def __init__(self, identity: MeterIdentity, config: MeterConfig, store: MeterStore, account: SigningKey | None):
        self.id, self.config, self.store, self.account = identity, config, store, account
        self.interval_ms = config.interval_s * 1000
        self.lead_ms = min(max(self.interval_ms // LEAD, MIN_LEAD_MS), self.interval_ms // 2)
        self.policy_path: Path = identity.root / CONFIG_NAME
        self.history = forecast.History()
        # (k, net Wh total seen first in k, seen from k's start, when): where k's energy is counted from
        self._mark: tuple[int, int, bool, int] | None = None
        self._planned: int | None = None  # the last interval planned in this run

    def tick(self, now: int, totals: Totals) -> list[agent.OrderIntent]:
        """Called by the loop's housekeeping; the orders placed now, if any."""
        self._observe(now // self.interval_ms, totals.wh_in - totals.wh_out, now)
        target = now // self.interval_ms + 1
        if target == self._planned or now < target * self.interval_ms - self.lead_ms:
            return []
        self._planned = target
        if self.account is None:
            return []
        try:
            current = policy.load(self.policy_path)
        except (ValueError, OSError) as exc:
            log.warning("%s: no trading this interval: %s", self.id.meter, exc)
            return []
        if current.mode != "auto":
            return []
        day = agent.day_of(target, self.interval_ms)
        first_of_day = -(-day * agent.DAY_MS // self.interval_ms)  # the day's first interval
        mine = self.store.orders_from(first_of_day)
        spent = agent.spent_on_day(mine, day, self.interval_ms)
        known = self.store.account()
        money = max(0, current.max_spend_per_day - spent) if known is None else spendable(known.balance, mine)
        guess = forecast.forecast(self._with_current(now, totals), target, self.config.interval_s)
        intents = agent.plan(
            current, guess, money, mine, spent, target, self.config.interval_s, bool(self.config.source)
        )
        return [intent for intent in intents if self._place(intent, now)]

    def _observe(self, k: int, net: int, now: int) -> None:
        mark = self._mark
        if mark is not None and mark[0] == k:
            return
        if mark is not None and mark[0] == k - 1 and mark[2]:
            self.history = forecast.record(self.history, mark[0], net - mark[1], self.config.interval_s)
        self._mark = (k, net, mark is not None and mark[0] == k - 1, now)

    def _with_current(self, now: int, totals: Totals) -> forecast.History:
        """The history with the interval under way as its latest: what it measured since its
        first look at it, extrapolated to the whole interval (once it watched at least half).
        The plan is made 90% into the interval before the target, and without it the forecast
        would lag a whole interval more behind a rising or setting sun."""
        mark = self._mark
        k = now // self.interval_ms
        if mark is None or mark[0] != k:
            return self.history
        elapsed = now - mark[3]
        if elapsed < self.interval_ms // 2:
            return self.history
        so_far = totals.wh_in - totals.wh_out - mark[1]
        whole = abs(so_far) * self.interval_ms // elapsed  # truncated toward zero, as forecast does
        return forecast.record(self.history, k, whole if so_far >= 0 else -whole, self.config.interval_s)

    def _place(self, intent: agent.OrderIntent, now: int) -> bool:
        assert self.account is not None
        try:
            if intent.side == Side.ASK:
                row = orders.new_ask(
                    self.store, self.account, self.id.meter, self.config.source, intent.wh, intent.price, intent.k, now
                )
            else:
                exp = market.fill_exp(intent.k, self.interval_ms, self.config.grace)
                row = orders.new_bid(
                    self.store, self.account, intent.wh, intent.price, intent.k, intent.green, intent.sealed, exp, now
                )
        except TradeError as exc:
            log.warning("%s: the agent could not %s for interval %d: %s", self.id.meter, intent.side, intent.k, exc)
            return False
        log.info(
            "%s agent: %s %d Wh at %d for interval %d: order %s",
            self.id.meter, intent.side, intent.wh, intent.price, intent.k, row.id.hex(),
        )  # fmt: skip
        return True
