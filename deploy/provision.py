"""Provisioning a community: manufacturer CA, meters with devcerts, household accounts, validators.

Additive and idempotent so an operator can re-run it to grow a community: keys are never
overwritten (broker.keys), nothing on disk is removed, a devcert is reissued only when it no
longer matches the CA or device key or has expired, and the TOML summaries are rewritten from
the keys on disk and the market choices recorded in community.toml (each meter's energy
source, the interval), which a re-run keeps unless it is given new ones.
"""

from __future__ import annotations

import errno
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import tomli_w
from nacl.signing import SigningKey

from broker.keys import fsync_dir, public_hex, secret_dir, write_new_key, write_public
from deploy.bus import ensure_bus
from ledger.genesis import (
    DEFAULT_INTERVAL_S,
    GENESIS_FILE,
    NO_SOURCE,
    Genesis,
    MarketTerms,
    MeterEntry,
    default_reveal_s,
    read_genesis,
)
from ledger.operator import operator_key_path
from ledger.validator import secret_validator_dir
from wire.messages import SELL_SOURCES, DevCert, open_message
from wire.reasons import Reject

DAY_MS = 86_400_000
DEFAULT_VALID_DAYS = 3650
# A new devcert is valid from this long before provisioning, so peers whose clocks lag the
# provisioning machine's by up to an hour still accept the new meter's birth.
CLOCK_SKEW_MS = 3_600_000
# Allowed values, shared with the CLI; ids have four digits.
METERS = range(1, 10_000)
ACCOUNTS = range(0, 10_000)
VALIDATORS = range(1, 10_000)
VALID_DAYS = range(1, 36_501)
INTERVAL_S = range(1, 86_401)
NO_SOURCE_WORD = "none"  # --source METER=none: the meter no longer sells
COMMUNITY_NAME = "community.toml"

_COMMUNITY_HEADER = """\
# An spb-energy community, written by `spb-deploy provision` from the keys on disk.
# Public keys only, no secrets: safe to hand to validators and operators.
# Regenerated on every run, so edits here are lost, except [market] and each meter's
# source, which the next run keeps (change them with --interval-s, --reveal-s, --source).

"""
_METER_HEADER = """\
# What meter {id} needs besides its secrets (device.key, account.key beside this file).
# Public keys and the market's terms; written by `spb-deploy provision`.

"""


class ProvisionError(Exception):
    """The community on disk is in a state provisioning must not fix on its own."""


@dataclass(frozen=True, slots=True)
class Meter:
    id: str
    device_pk: str
    account_pk: str | None
    devcert_nbf: int
    devcert_exp: int
    source: str | None = None  # what it sells on the market (wire.messages.SELL_SOURCES); None: cannot sell


@dataclass(frozen=True, slots=True)
class Account:
    """A household's ledger account in community.toml (not a Unix user: deploy.rootfs.SystemUser)."""

    id: str
    pk: str
    meter: str | None


@dataclass(frozen=True, slots=True)
class Validator:
    index: int
    pk: str


@dataclass(frozen=True, slots=True)
class Market:
    """The market's terms that provisioning chooses (the rest are ledger.genesis.MarketTerms defaults)."""

    interval_s: int = DEFAULT_INTERVAL_S
    reveal_s: int = default_reveal_s(DEFAULT_INTERVAL_S)

    def terms(self, meters: tuple[MeterEntry, ...] = ()) -> MarketTerms:
        """These choices with the genesis' defaults for the rest; GenesisError if it cannot take them."""
        return MarketTerms(meters, interval_s=self.interval_s, reveal_s=self.reveal_s)


@dataclass(frozen=True, slots=True)
class Community:
    """What community.toml says, as values; public keys are hex like in the file."""

    root: Path
    ca_pk: str
    meters: tuple[Meter, ...]
    accounts: tuple[Account, ...]
    validators: tuple[Validator, ...]
    market: Market = Market()
    operator_pk: str | None = None  # signs register, fund, payout, retire (DIR/operator/operator.key)

    @property
    def toml_path(self) -> Path:
        return self.root / COMMUNITY_NAME

    def market_terms(self) -> MarketTerms:
        """The genesis' market section: every household meter (one with an account), its account and source."""
        meters = tuple(
            MeterEntry(m.id, bytes.fromhex(m.account_pk), m.source or NO_SOURCE)
            for m in self.meters
            if m.account_pk is not None
        )
        return self.market.terms(meters)


def meter_id(i: int) -> str:
    return f"m{i:04d}"


def account_id(i: int) -> str:
    return f"a{i:04d}"


def provision(
    root: Path,
    meters: int,
    accounts: int | None,
    validators: int,
    now_ms: int,
    valid_days: int = DEFAULT_VALID_DAYS,
    new_ca: bool = False,
    monitors: tuple[str, ...] = (),
    broker_hosts: tuple[str, ...] = (),
    sources: Mapping[str, str] | None = None,
    interval_s: int | None = None,
    reveal_s: int | None = None,
) -> Community:
    """Make sure the CA, `meters` meters, `accounts` accounts and `validators` validators exist.

    `accounts` defaults to one household per meter. Members from earlier runs beyond the
    counts are kept and described too. New devcerts are valid from `now_ms - CLOCK_SKEW_MS`
    to `now_ms + valid_days`. A missing CA key is replaced only with `new_ca` once devcerts
    exist, since meters flashed with the old CA would no longer trust the new meters.

    The market (docs/PROTOCOL.md §9): `sources` registers what a household meter sells
    (meter id -> one of wire.messages.SELL_SOURCES, or NO_SOURCE: it can no longer sell);
    `interval_s` and `reveal_s` are the market's interval and sealed-bid reveal window.
    What is not given is kept from community.toml (a meter not named keeps its source, none
    at first; reveal_s follows a new interval_s unless given).

    The bus's certificates and broker configs follow (deploy.bus): `monitors` names
    read-only monitoring users to add, `broker_hosts` the names the main broker is reached by;
    the operator and the JSON mirror (DIR/mirror, broker.secure.mirror_dir) are always there.
    """
    accounts = meters if accounts is None else accounts
    for name, value, allowed in (
        ("meters", meters, METERS),
        ("accounts", accounts, ACCOUNTS),
        ("validators", validators, VALIDATORS),
        ("valid_days", valid_days, VALID_DAYS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be in {allowed.start}..{allowed.stop - 1}, not {value}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # only raised for a non-directory
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(root)) from None
    ca_key = root / "ca" / "ca.key"
    if not new_ca and not ca_key.exists() and any(root.glob("meters/m[0-9][0-9][0-9][0-9]/devcert.cbor")):
        raise ProvisionError(
            f"{ca_key} is missing but meters have devcerts from it: restore it, "
            "or pass --new-ca to make a new CA and reissue every devcert "
            "(every meter must then be reflashed)"
        )
    recorded_market, recorded_sources = _recorded(root / COMMUNITY_NAME)
    market = _market(recorded_market, interval_s, reveal_s)
    n_meters = max([meters, *_on_disk(root / "meters", "m[0-9][0-9][0-9][0-9]", "device.key")])
    n_accounts = max(
        [
            accounts,
            *_on_disk(root / "meters", "m[0-9][0-9][0-9][0-9]", "account.key"),
            *_on_disk(root / "accounts", "a[0-9][0-9][0-9][0-9]", "account.key"),
        ]
    )
    n_validators = max([validators, *(i + 1 for i in _on_disk(root / "validators", "v[0-9]*", "validator.key"))])
    source_of = _sources({**recorded_sources, **(sources or {})}, n_meters, n_accounts)
    _same_as_the_chain(root, market, source_of)

    ca = write_new_key(secret_dir(ca_key.parent) / ca_key.name)
    operator = write_new_key(secret_dir(operator_key_path(root).parent) / operator_key_path(root).name)
    validity = (now_ms - CLOCK_SKEW_MS, now_ms + valid_days * DAY_MS)
    validator_list = [_validator(root, i) for i in range(n_validators)]
    meter_list = [
        _meter(root, i, ca, i <= n_accounts, now_ms, validity, validator_list, source_of.get(meter_id(i)), market)
        for i in range(1, n_meters + 1)
    ]
    account_list = [Account(account_id(i), m.account_pk, m.id) for i, m in enumerate(meter_list, 1) if m.account_pk]
    account_list += [_loose_account(root, i) for i in range(n_meters + 1, n_accounts + 1)]

    community = Community(
        root,
        public_hex(ca),
        tuple(meter_list),
        tuple(account_list),
        tuple(validator_list),
        market,
        public_hex(operator),
    )
    write_public(community.toml_path, _community_toml(community))
    ensure_bus(
        root, [m.id for m in meter_list], [v.index for v in validator_list], now_ms, valid_days, monitors, broker_hosts
    )
    return community


def community_genesis(community: Community, units: int, block_ms: int, tariff: int = 0) -> Genesis:
    """The ledger genesis of a community: its CA, every account with `units`, its validators,
    its operator's key (docs/PROTOCOL.md §10: it registers households that join later, funds
    and pays out), and the market section (every household meter with its account and source), which also
    turns on proof of delivery: every trade settles only against export its seller's meter proved.

    Written beside community.toml, it makes the community dir a ledger dir as well
    (validators/vI/validator.key is where `spb-ledger run` looks for validator I's key).
    `tariff`: the flat grid price the community compares its market with (0: none).
    """
    return Genesis.build(
        [bytes.fromhex(community.ca_pk)],
        {bytes.fromhex(a.pk): units for a in community.accounts},
        [bytes.fromhex(v.pk) for v in community.validators],
        block_ms,
        replace(community.market_terms(), tariff=tariff),
        operators=[bytes.fromhex(community.operator_pk)] if community.operator_pk else (),
    )


def _recorded(path: Path) -> tuple[Market | None, dict[str, str]]:
    """The market and the meters' sources an earlier run recorded in community.toml (none before the first)."""
    try:
        doc = tomllib.loads(path.read_text())
        rows = doc.get("market")
        market = None if rows is None else Market(int(rows["interval_s"]), int(rows["reveal_s"]))
        return market, {str(m["id"]): str(m["source"]) for m in doc.get("meters", []) if "source" in m}
    except FileNotFoundError:
        return None, {}
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ProvisionError(f"{path}: cannot read the recorded market and sources ({exc}); fix or remove it") from None


def _market(recorded: Market | None, interval_s: int | None, reveal_s: int | None) -> Market:
    """The terms given, else the recorded ones; a new interval without a reveal window gets its default."""
    interval = interval_s if interval_s is not None else recorded.interval_s if recorded else DEFAULT_INTERVAL_S
    if reveal_s is None:
        reveal_s = recorded.reveal_s if recorded and recorded.interval_s == interval else default_reveal_s(interval)
    if interval not in INTERVAL_S:
        raise ValueError(f"interval_s must be in {INTERVAL_S.start}..{INTERVAL_S.stop - 1}, not {interval}")
    market = Market(interval, reveal_s)
    market.terms()  # GenesisError (a ValueError) unless the genesis takes them
    return market


def _same_as_the_chain(root: Path, market: Market, source_of: dict[str, str]) -> None:
    """Refuse market terms or sources that differ from the genesis already in DIR.

    A chain's genesis never changes: a meter told it sells wind while the genesis registers it
    without a source would have every ask refused (`not-source`).
    """
    if not (root / GENESIS_FILE).exists():
        return
    terms = read_genesis(root).market
    if terms is None:  # a v1 chain: no market to disagree with
        return
    if (terms.interval_s, terms.reveal_s) != (market.interval_s, market.reveal_s):
        raise ProvisionError(
            f"{root / GENESIS_FILE} fixes interval_s {terms.interval_s} and reveal_s {terms.reveal_s}; "
            "a chain's genesis never changes"
        )
    for entry in terms.meters:
        if source_of.get(entry.meter, NO_SOURCE) != entry.source:
            raise ProvisionError(
                f"{root / GENESIS_FILE} registers {entry.meter} with source {entry.source or NO_SOURCE_WORD}; "
                "a chain's genesis never changes"
            )


def _sources(sources: dict[str, str], n_meters: int, n_accounts: int) -> dict[str, str]:
    """Each meter's source, checked to name a household meter: only a meter with an account can sell."""
    households = {meter_id(i) for i in range(1, min(n_meters, n_accounts) + 1)}
    for meter, source in sources.items():
        if source != NO_SOURCE and source not in SELL_SOURCES:
            raise ValueError(
                f"{meter}: a source is one of {', '.join(SELL_SOURCES)} or {NO_SOURCE_WORD}, not {source!r}"
            )
        if meter not in households:
            why = "no such meter" if meter not in {meter_id(i) for i in range(1, n_meters + 1)} else "it has no account"
            raise ProvisionError(f"{meter} cannot be given a source: {why} (--meters, --accounts)")
    return {meter: source for meter, source in sources.items() if source != NO_SOURCE}


def _meter(
    root: Path,
    i: int,
    ca: SigningKey,
    has_account: bool,
    now_ms: int,
    validity: tuple[int, int],
    validators: list[Validator],
    source: str | None,
    market: Market,
) -> Meter:
    """One meter's state dir, self-contained so it can be flashed later: its keys, the CA and
    validator keys it checks births, CoEs and ledger statuses against, and in `[market]` the
    genesis' terms it times its export records and orders by and its source (what its asks
    may offer; left out: none), which edge.config reads."""
    mid = meter_id(i)
    terms = market.terms()
    home = secret_dir(secret_dir(root / "meters") / mid)
    device = write_new_key(home / "device.key")
    account_pk = None
    if has_account:
        _adopt_loose_account(root, i, home / "account.key")
        account_pk = public_hex(write_new_key(home / "account.key"))
    cert = _devcert(home / "devcert.cbor", mid, device, ca, now_ms, validity)
    meter = {
        "id": mid,
        "ca_pk": public_hex(ca),
        "device_pk": public_hex(device),
        "account_pk": account_pk,
        "validators": [v.pk for v in validators],
        "market": _without_none(
            {"interval_s": terms.interval_s, "reveal_s": terms.reveal_s, "grace": terms.grace, "source": source}
        ),
    }
    write_public(home / "meter.toml", _METER_HEADER.format(id=mid) + tomli_w.dumps(_without_none(meter)))
    return Meter(mid, public_hex(device), account_pk, cert.nbf, cert.exp, source)


def _devcert(
    path: Path, mid: str, device: SigningKey, ca: SigningKey, now_ms: int, validity: tuple[int, int]
) -> DevCert:
    """The devcert on disk if the current CA issued it for this device and it has not expired,
    else a new one."""
    device_pk, ca_pk = bytes(device.verify_key), bytes(ca.verify_key)
    try:
        opened = open_message(path.read_bytes(), DevCert)
    except (FileNotFoundError, Reject):
        opened = None
    if (
        opened is not None
        and (opened.body.meter, opened.body.pk, opened.body.iss) == (mid, device_pk, ca_pk)
        and now_ms <= opened.body.exp
        and opened.envelope.verifies(ca_pk)
    ):
        return opened.body
    cert = DevCert(meter=mid, pk=device_pk, iss=ca_pk, nbf=validity[0], exp=validity[1])
    write_public(path, cert.sign(ca))
    return cert


def _adopt_loose_account(root: Path, i: int, home: Path) -> None:
    """An account made before its meter existed moves into the meter's dir, keeping its key.

    Link, then unlink: a crash in between leaves one key under two names, which the next run
    recognises and finishes moving.
    """
    loose = root / "accounts" / account_id(i) / "account.key"
    if not loose.exists():
        return
    try:
        os.link(loose, home)  # unlike rename, never replaces an existing key
    except FileExistsError:
        if not os.path.samefile(loose, home):
            raise ProvisionError(f"{loose} and {home} both hold account {account_id(i)}; remove one") from None
    fsync_dir(home.parent)  # the new name is durable before the old one goes
    loose.unlink()
    try:
        loose.parent.rmdir()
    except OSError as exc:  # someone's other files are in it: leave them
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise


def _loose_account(root: Path, i: int) -> Account:
    """An account with no meter of its own, e.g. a buyer without solar panels."""
    key = write_new_key(secret_dir(secret_dir(root / "accounts") / account_id(i)) / "account.key")
    return Account(account_id(i), public_hex(key), None)


def _validator(root: Path, i: int) -> Validator:
    key = write_new_key(secret_validator_dir(root, i) / "validator.key")
    return Validator(i, public_hex(key))


def _on_disk(parent: Path, pattern: str, holding: str) -> list[int]:
    """Indices of `parent/<pattern>` dirs holding `holding`, so earlier runs' members are kept."""
    names = (p.parent.name for p in parent.glob(f"{pattern}/{holding}"))
    return [int(name[1:]) for name in names if name[1:].isdecimal()]


def _community_toml(c: Community) -> str:
    """Every list as [[tables]], even short ones tomli-w would inline, so the file reads uniformly.

    An empty list leaves its key out.
    """
    head = {"ca": {"pk": c.ca_pk}, "market": asdict(c.market)}
    if c.operator_pk is not None:
        head["operator"] = {"pk": c.operator_pk}
    parts = [_COMMUNITY_HEADER, tomli_w.dumps(head)]
    for name, rows in (("meters", c.meters), ("accounts", c.accounts), ("validators", c.validators)):
        parts += [f"\n[[{name}]]\n{tomli_w.dumps(_without_none(asdict(row)))}" for row in rows]
    return "".join(parts)


def _without_none(d: dict) -> dict:
    """TOML has no null: an absent key means "none"."""
    return {k: v for k, v in d.items() if v is not None}
