"""The household's trading policy: the limits within which the meter's agent trades for it.

It lives in the installer's DIR/config.toml as a `[policy]` table, not `[market]`: meter.toml's
`[market]` table holds the community's terms (interval_s, reveal_s, grace, source), which
config.toml may override as top-level keys, so "market" already means the terms; the policy
is the household's own choice and is kept apart (docs/decisions/0003-meter-v1.md).

`spb-meter policy DIR --set KEY=VALUE` rewrites only that table, atomically, and keeps the
rest of config.toml byte for byte (comments included): an installer's notes survive. A bad
value is refused with the key, the value and what it should be, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

TABLE = "policy"
MODES = ("manual", "auto")
LIMIT = 1 << 63  # ints stay below: TOML's and the ledger's 64-bit integers


@dataclass(frozen=True)
class Policy:
    """Defaults are today's behaviour: manual, so an upgraded meter places no order by itself."""

    mode: str = "manual"  # auto: the agent asks and bids each interval; manual: only the household does
    sell_min_price: int = 0  # units per Wh: never ask below
    buy_max_price: int = 0  # units per Wh: never bid above; 0 never buys
    green_only: bool = False  # bid only for renewable energy (solar, wind, hydro)
    reserve_w: int = 0  # W the house keeps for itself: never offered
    max_spend_per_day: int = 0  # units a day's bids may escrow at most (UTC days)
    sealed: bool = False  # bid sealed (commitment first, revealed after the gate) or open

    def check(self) -> None:
        """Types and ranges, one precise reason per bad value."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"policy {f.name} must be true or false, not {value!r}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < LIMIT):
                raise ValueError(f"policy {f.name} must be a whole number in 0..2^63-1, not {value!r}")
            if f.type == "str" and value not in MODES:
                raise ValueError(f"policy {f.name} must be one of {', '.join(MODES)}, not {value!r}")

    @classmethod
    def from_table(cls, table: object, where: str) -> Policy:
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [{TABLE}] must be a table")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{where}: unknown policy setting(s) {', '.join(unknown)}")
        policy = cls(**table)
        policy.check()
        return policy

    def with_set(self, assignments: list[str]) -> Policy:
        """This policy with `KEY=VALUE`s applied; the whole result is checked, or nothing changes."""
        values = dataclasses.asdict(self)
        kinds = {f.name: f.type for f in dataclasses.fields(self)}
        for assignment in assignments:
            key, eq, text = assignment.partition("=")
            key, text = key.strip(), text.strip()
            if not eq or key not in kinds:
                raise ValueError(f"--set {assignment!r}: expected KEY=VALUE with KEY one of {', '.join(kinds)}")
            values[key] = _parse(key, str(kinds[key]), text)
        policy = Policy(**values)
        policy.check()
        return policy

    def render(self) -> str:
        """The `[policy]` table as TOML text (values are ints, bools and a mode word only)."""
        lines = [f"[{TABLE}]"]
        for key, value in dataclasses.asdict(self).items():
            shown = ("true" if value else "false") if isinstance(value, bool) else value
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {shown}")
        return "\n".join(lines) + "\n"


def _parse(key: str, kind: str, text: str) -> object:
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError(f"policy {key} must be true or false, not {text!r}")
        return text == "true"
    if kind == "int":
        if not text.isdecimal() or not text.isascii():
            raise ValueError(f"policy {key} must be a whole number in 0..2^63-1, not {text!r}")
        return int(text)
    return text.strip('"')


def load(path: Path) -> Policy:
    """config.toml's [policy] over the defaults (manual); edge.config refuses a bad one at start too."""
    document = tomllib.loads(path.read_text()) if path.exists() else {}
    return Policy.from_table(document.get(TABLE, {}), str(path))


def save(path: Path, policy: Policy) -> None:
    """Replace the [policy] table of config.toml, keeping every other line, atomically.

    The result is parsed back before it replaces the file: the other settings must read
    exactly as before and the table as `policy`, else nothing is written."""
    policy.check()
    old = path.read_text() if path.exists() else ""
    before = tomllib.loads(old)
    text = _replace_table(old, policy.render(), str(path))
    try:
        after = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        after = {}
    others = {k: v for k, v in before.items() if k != TABLE}
    if {k: v for k, v in after.items() if k != TABLE} != others or after.get(TABLE) != dataclasses.asdict(policy):
        raise ValueError(f"{path}: its [{TABLE}] is not one plain table (inline or dotted?): edit it by hand")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _replace_table(text: str, table: str, where: str) -> str:
    """`text` with its `[policy]` section (header to the next header) replaced by `table`,
    or `table` appended when there is none. Top-level keys must stay above any table."""
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    mine = [i for i in headers if lines[i].split("#")[0].strip() == f"[{TABLE}]"]
    if len(mine) > 1:
        raise ValueError(f"{where}: [{TABLE}] appears more than once")
    if not mine:
        gap = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + gap + table
    start = mine[0]
    end = next((i for i in headers if i > start), len(lines))
    tail = lines[end:]
    return "".join(lines[:start]) + table + ("\n" if tail else "") + "".join(tail)
