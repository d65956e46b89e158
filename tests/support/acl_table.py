"""The access table of docs/PROTOCOL.md §7 (topic x identity: read, write, readwrite or —)
and Mosquitto's reading of an ACL file, so that broker.secure's ACL (tests/broker/test_acl.py)
and a real broker (tests/system/test_meter_privacy.py) are held to the documented contract.

A row's topic is a template: `{name}` stands for one topic level (`{path}` for one or more),
`{a,b,c}` for one of the words listed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.client import topic_matches_sub

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
HEADER = "| topic | own meter | other meter |"
# The identity columns, in the table's order. "own meter" is the meter the topic names (or
# whose household holds the account it names); in rows that name neither, any meter.
COLUMNS = ("own meter", "other meter", "validator", "monitor", "mirror", "operator", "bridge", "local")
NONE = "—"
CELLS = ("read", "write", "readwrite", NONE)
_TOKEN = re.compile(r"\{([a-z]+)\}|\{([a-z]+(?:,[a-z]+)+)\}")


@dataclass(frozen=True)
class Row:
    template: str
    access: dict[str, str]  # column -> cell

    def regex(self) -> re.Pattern[str]:
        parts, at = [], 0
        for token in _TOKEN.finditer(self.template):
            parts.append(re.escape(self.template[at : token.start()]))
            name, words = token.groups()
            if words:
                parts.append(f"(?:{'|'.join(map(re.escape, words.split(',')))})")
            else:
                parts.append(f"(?P<{name}>{'.+' if name == 'path' else '[^/]+'})")
            at = token.end()
        parts.append(re.escape(self.template[at:]))
        return re.compile("".join(parts))

    def samples(self, values: dict[str, tuple[str, ...]]) -> list[str]:
        """Every topic of the row with each placeholder replaced by each of its sample values."""
        literals = _TOKEN.split(self.template)[::3]  # split() also returns both groups of each token
        choices = [tuple(words.split(",")) if words else values[name] for name, words in _TOKEN.findall(self.template)]
        out = []
        for picked in itertools.product(*choices):
            out.append("".join(part for pair in itertools.zip_longest(literals, picked, fillvalue="") for part in pair))
        return out


def rows(text: str | None = None) -> list[Row]:
    """The table's rows, checked for shape: every identity column holds one of CELLS."""
    lines = (PROTOCOL.read_text() if text is None else text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    assert tuple(header[1 : 1 + len(COLUMNS)]) == COLUMNS, header
    out = []
    for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :]):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        topic, access = cells[0].strip("`"), dict(zip(COLUMNS, cells[1 : 1 + len(COLUMNS)], strict=True))
        assert set(access.values()) <= set(CELLS), line
        out.append(Row(topic, access))
    return out


def row_of(topic: str, table: list[Row]) -> tuple[Row, dict[str, str]]:
    """The one row a concrete topic belongs to, and its placeholders' values."""
    found = [(row, m.groupdict()) for row in table if (m := row.regex().fullmatch(topic))]
    assert len(found) == 1, f"{topic} is in {len(found)} rows of the table"
    return found[0]


def readable(topic: str, table: list[Row], meter: str, account: str) -> bool:
    """Whether the table lets meter `meter` (household account `account`) read `topic`."""
    row, values = row_of(topic, table)
    own = values.get("meter") == meter or values.get("account") == account
    return "read" in row.access["own meter" if own else "other meter"]


def may(acl_text: str, user: str | None, topic: str) -> str:
    """What Mosquitto lets `user` (None: an anonymous client) do on `topic` under an ACL file,
    as a table cell: `pattern` lines (with %u) apply to every named user, `topic` lines to the
    section they are in (before any `user` line: anonymous clients), and a matching `deny`
    wins over every grant (so Mosquitto 2.0 does; decision 0005)."""
    grants: list[tuple[str, str]] = []
    section: str | None = None
    for line in acl_text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            section = words[1]
        elif words[0] == "pattern" and user is not None:
            grants.append((words[1], words[2].replace("%u", user)))
        elif words[0] == "topic" and section == user:
            grants.append((words[1], words[2]) if len(words) == 3 else ("readwrite", words[1]))
    matching = {access for access, topic_filter in grants if topic_matches_sub(topic_filter, topic)}
    if "deny" in matching:
        return NONE
    read = bool(matching & {"read", "readwrite"})
    write = bool(matching & {"write", "readwrite"})
    return {(True, True): "readwrite", (True, False): "read", (False, True): "write"}.get((read, write), NONE)
