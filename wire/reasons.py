"""The reason codes of docs/PROTOCOL.md §4: the only words a rejection may use."""

from __future__ import annotations

# Stateless, in the normative order of §4 (first failure wins).
STATELESS = ("decode", "noncanonical", "type", "schema", "cert", "coe", "proof", "not-operator", "signature")
# Stateful, decided by the ledger after the stateless checks.
STATEFUL = (
    "unknown-ctp",
    "duplicate",
    "replay",
    "insufficient-funds",
    "not-held",
    "meter-mismatch",
    "not-payer",
    "energy-short",
    "expired",
    "too-early",
    "unknown-account",
    # The market and proof of delivery (docs/decisions/0009-market.md):
    "gate-closed",  # the order's interval has started (or a reveal's window has closed)
    "too-far",  # the order's interval is more than the genesis allows ahead
    "not-source",  # the ask's meter is not the seller's, or not registered with that source
    "unknown-order",  # a withdraw or reveal names no order of this ledger
    "not-owner",  # a withdraw or reveal signed by someone other than the order's owner
    "not-open",  # the order is withdrawn, revealed or cleared already
    "reveal-mismatch",  # the revealed bid is not the one committed to, or costs more than the deposit
    "unknown-meter",  # an export record from a meter the genesis does not register
    "counter",  # an export record's interval or cumulative counter goes back
    "oversold",  # the payee's proved export does not cover this trade's energy
    # Bounded memory (docs/decisions/0013-bounded-memory.md):
    "far-expiry",  # a CTP's exp is more than a day after the block time
    # Accounts after launch (docs/decisions/0016-accounts.md):
    "retired",  # the account was retired: no new trade, order, fund or meter
    "rotated",  # the key was replaced by a rotation: its messages are no longer taken
    "key-taken",  # a rotation's new key is an account key already
    "meter-taken",  # a register names a meter registered already (to another account)
    "over-limit",  # a fund would take the ledger's money over 2^63 - 1 units
)
# Not a verdict on the message (an extension of §4, docs/decisions/0008-bounded-inputs.md):
# the ledger had no room for it and did not decide it; the sender may send it again later.
BUSY = "busy"
TRANSIENT = (BUSY,)
REASONS = frozenset(STATELESS + STATEFUL + TRANSIENT)
# Verdicts that the same bytes may overturn later: the seller's export may be proved after
# the ERC came (`oversold`, docs/PROTOCOL.md §9.4), and time ends `too-early` (a reveal or an
# export record from a meter whose clock runs ahead, a cancel before expiry) and
# `far-expiry` (a CTP whose exp is too far after the block time, decision 0013). Senders send
# the same bytes again, so the ledger decides them again instead of taking them for a
# broker's copy of a decided message.
OVERSOLD = "oversold"
TOO_EARLY = "too-early"
FAR_EXPIRY = "far-expiry"  # not yet: once its exp is within a day, the same bytes may hold
NOT_FINAL = (OVERSOLD, TOO_EARLY, FAR_EXPIRY)


class Reject(Exception):
    """A message failed a check; `reason` is a §4 code, `detail` is for humans and logs."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"not a reason code: {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
