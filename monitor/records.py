"""A verified message as JSON: the record a monitoring tool reads (docs/MONITORING.md).

One rule for every body type, so a new field cannot be mirrored differently in two places:
the body's wire map (`Body.to_map`), byte strings as lowercase hex, the units in the names
(`t` is `t_ms`, `price` is `price_units_per_wh`, a market product `[price, wh]` becomes an
object), and nothing a dashboard cannot use (embedded certificates, CoEs, Merkle paths).
Pure: the verifying and the publishing are the caller's.
"""

from __future__ import annotations

from typing import Any

from wire.messages import Body

# Wire key -> JSON key: time is milliseconds since the epoch, money is whole units.
RENAMED = {
    "t": "t_ms",
    "exp": "exp_ms",
    "nbf": "nbf_ms",
    "price": "price_units_per_wh",
    "amount": "amount_units",
    "deposit": "deposit_units",
    "balance": "balance_units",
    "held": "held_units",
    "filled": "filled_wh",
    "total": "total_wh",
}
# Proofs and certificates: verified here, of no use to a chart, and kilobytes each.
DROPPED = frozenset({"v", "cert", "coe", "path", "bid", "nonce", "c"})
PRODUCTS = ("green", "open")  # a `cleared` result's [price or null, wh] per product


def record(body: Body) -> dict[str, Any]:
    """The JSON object for a verified body: its `typ` and every field, renamed with units."""
    out: dict[str, Any] = {}
    for key, value in body.to_map().items():
        if key in DROPPED:
            continue
        if body.typ == "cleared" and key in PRODUCTS:
            price, wh = value
            out[key] = {"price_units_per_wh": price, "wh": wh}
        else:
            out[RENAMED.get(key, key)] = plain(value)
    return out


def plain(value: object) -> Any:
    """A wire value as JSON: bytes as hex, enums as their text, lists element by element."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, str):
        return str(value)  # a StrEnum's text, not its repr
    return value
