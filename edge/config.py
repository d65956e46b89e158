"""A meter's settings: defaults here, overridden by the optional DIR/config.toml.

provision rewrites meter.toml (keys and trust anchors) on every run, so what an installer
tunes by hand (calibration, display, rates) lives in a file of its own that nothing
rewrites. Unknown keys are refused: a typo must not silently leave a default in force.

The market's terms (interval_s, reveal_s, grace: the genesis's; source: the one this meter
is registered with) are the community's, not the installer's: provision writes them into
meter.toml's `[market]` table, read here under config.toml. A state dir without one gets
the genesis defaults and no source (it cannot sell on the market).

config.toml's `[policy]` table is the household's trading policy (edge/policy.py): it is
checked here too, so a meter with a bad one refuses to start, but read by edge.policy.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edge.display_drivers import DISPLAYS
from edge.policy import TABLE as POLICY_TABLE
from edge.policy import Policy
from wire.messages import SELL_SOURCES

CONFIG_NAME = "config.toml"
IDENTITY_NAME = "meter.toml"  # provision's; its optional [market] table holds the market terms
MARKET_KEYS = ("interval_s", "reveal_s", "grace", "source")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": (int, float),
    "str": str,
    "int | None": (int, type(None)),
}
_WORDS = {"int": "a whole number", "float": "a number", "str": "text", "int | None": 'a whole number or "none"'}


@dataclass(frozen=True)
class MeterConfig:
    sample_hz: float = 10.0  # potentiometer samples per second
    reading_s: float = 10.0  # seconds between signed readings
    import_channel: int = 0  # MCP3008 channel of the import potentiometer
    export_channel: int = 1  # ... and of the export one
    vref: float = 3.3  # MCP3008 reference voltage
    import_full_w: int = 5000  # W at full scale (vref) on the import channel
    export_full_w: int = 5000  # ... on the export channel
    dead_band_w: int = 20  # below this a channel reads 0 W (pot noise at rest)
    batch_size: int = 64  # one-time keys per CoE batch (docs/PROTOCOL.md §3)
    coe_days: int = 30  # how long a CoE this meter witnesses stays valid
    coe_per_hour: int = 12  # CoE requests served per requester per hour (burst of 3)
    outbox_max: int = 100_000  # readings kept while the broker is unreachable (~11 days at 10 s)
    resend_s: float = 30.0  # an unanswered CTP, ERC or cancel is sent again after this
    display: str = "none"  # sensehat | emu | terminal | none
    led_pin: int | None = 17  # GPIO of the "trading session open" LED; none: no LED
    night_start: int = 22  # local hours with the LED matrix in low light
    night_end: int = 7
    # The market (docs/PROTOCOL.md §9.1), as provision writes them into meter.toml [market]:
    interval_s: int = 300  # the genesis's trading interval: export records go out at its ends
    reveal_s: int = 60  # the genesis's reveal window after a gate, for sealed bids
    grace: int = 1  # intervals after its own that a fill may still be confirmed (§9.3 exp)
    source: str = ""  # this meter's registered source; "" cannot sell (ask)

    @classmethod
    def load(cls, state_dir: Path, **overrides) -> MeterConfig:
        """config.toml (if any) over the defaults, then command-line overrides that are not None."""
        path = state_dir / CONFIG_NAME
        values = dict(_market_terms(state_dir / IDENTITY_NAME))
        values.update(tomllib.loads(path.read_text()) if path.exists() else {})
        Policy.from_table(values.pop(POLICY_TABLE, {}), str(path))  # the agent's (edge.policy): checked here too
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        if values.get("led_pin") == "none":
            values["led_pin"] = None
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            assert isinstance(kind, str), "annotations stay strings: from __future__ import annotations"
            if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
                raise ValueError(f"{f.name} must be {_WORDS[kind]}, not {value!r}")
        if self.led_pin is not None and not 0 <= self.led_pin <= 27:
            raise ValueError('led_pin must be a GPIO number 0..27, or "none"')
        if not (0 <= self.night_start <= 23 and 0 <= self.night_end <= 23):
            raise ValueError("night_start and night_end are hours 0..23")
        if not 0 < self.sample_hz <= 1000 or not self.reading_s > 0:
            raise ValueError("sample_hz must be in (0, 1000] and reading_s positive")
        if (
            not {self.import_channel, self.export_channel} <= set(range(8))
            or self.import_channel == self.export_channel
        ):
            raise ValueError("import_channel and export_channel are two different MCP3008 channels 0..7")
        if min(self.import_full_w, self.export_full_w) <= 0 or self.dead_band_w < 0:
            raise ValueError("full-scale W must be positive and dead_band_w not negative")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError("batch_size must be in 1..1024 (docs/PROTOCOL.md §3)")
        if self.coe_days < 1 or self.coe_per_hour < 1 or self.outbox_max < 1 or self.resend_s <= 0:
            raise ValueError("coe_days, coe_per_hour, outbox_max and resend_s must be positive")
        if self.interval_s < 1 or self.reveal_s < 0 or self.grace < 0:
            raise ValueError("interval_s must be positive, reveal_s and grace not negative")
        if self.source and self.source not in SELL_SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {', '.join(SELL_SOURCES)} (or empty: none)")
        if self.display not in DISPLAYS:
            raise ValueError(f"display {self.display!r} is not one of {', '.join(DISPLAYS)}")


def _market_terms(identity: Path) -> dict:
    """meter.toml's [market] table (provision's), checked for unknown keys like config.toml."""
    if not identity.exists():
        return {}
    terms = tomllib.loads(identity.read_text()).get("market", {})
    unknown = sorted(set(terms) - set(MARKET_KEYS))
    if unknown:
        raise ValueError(f"{identity}: unknown market term(s) {', '.join(unknown)}")
    return terms
