"""Provisioning a community: manufacturer CA, meters with devcerts, household accounts, validators.

Additive and idempotent so an operator can re-run it to grow a community: keys are never
overwritten (broker.keys), nothing on disk is removed, a devcert is reissued only when it no
longer matches the CA or device key or has expired, and the TOML summaries are rewritten from
the keys on disk.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w
from nacl.signing import SigningKey

from broker.keys import fsync_dir, public_hex, secret_dir, write_new_key, write_public
from deploy.bus import ensure_bus
from ledger.genesis import Genesis
from ledger.validator import secret_validator_dir
from wire.messages import DevCert, open_message
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

_COMMUNITY_HEADER = """\
# An spb-energy community, written by `spb-deploy provision` from the keys on disk.
# Public keys only, no secrets: safe to hand to validators and operators.
# Regenerated on every run, so edits here are lost.

"""
_METER_HEADER = """\
# What meter {id} needs besides its secrets (device.key, account.key beside this file).
# Public keys only; written by `spb-deploy provision`.

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
class Community:
    """What community.toml says, as values; public keys are hex like in the file."""

    root: Path
    ca_pk: str
    meters: tuple[Meter, ...]
    accounts: tuple[Account, ...]
    validators: tuple[Validator, ...]

    @property
    def toml_path(self) -> Path:
        return self.root / "community.toml"


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
) -> Community:
    """Make sure the CA, `meters` meters, `accounts` accounts and `validators` validators exist.

    `accounts` defaults to one household per meter. Members from earlier runs beyond the
    counts are kept and described too. New devcerts are valid from `now_ms - CLOCK_SKEW_MS`
    to `now_ms + valid_days`. A missing CA key is replaced only with `new_ca` once devcerts
    exist, since meters flashed with the old CA would no longer trust the new meters.

    The bus's certificates and broker configs follow (deploy.bus): `monitors` names
    read-only monitoring users to add, `broker_hosts` the names the main broker is reached by.
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
    ca = write_new_key(secret_dir(ca_key.parent) / ca_key.name)
    n_meters = max([meters, *_on_disk(root / "meters", "m[0-9][0-9][0-9][0-9]", "device.key")])
    n_accounts = max(
        [
            accounts,
            *_on_disk(root / "meters", "m[0-9][0-9][0-9][0-9]", "account.key"),
            *_on_disk(root / "accounts", "a[0-9][0-9][0-9][0-9]", "account.key"),
        ]
    )
    n_validators = max([validators, *(i + 1 for i in _on_disk(root / "validators", "v[0-9]*", "validator.key"))])

    validity = (now_ms - CLOCK_SKEW_MS, now_ms + valid_days * DAY_MS)
    validator_list = [_validator(root, i) for i in range(n_validators)]
    meter_list = [
        _meter(root, i, ca, i <= n_accounts, now_ms, validity, validator_list) for i in range(1, n_meters + 1)
    ]
    account_list = [Account(account_id(i), m.account_pk, m.id) for i, m in enumerate(meter_list, 1) if m.account_pk]
    account_list += [_loose_account(root, i) for i in range(n_meters + 1, n_accounts + 1)]

    community = Community(root, public_hex(ca), tuple(meter_list), tuple(account_list), tuple(validator_list))
    write_public(community.toml_path, _community_toml(community))
    ensure_bus(
        root, [m.id for m in meter_list], [v.index for v in validator_list], now_ms, valid_days, monitors, broker_hosts
    )
    return community


def community_genesis(community: Community, units: int, block_ms: int) -> Genesis:
    """The ledger genesis of a community: its CA, every account with `units`, its validators.

    Written beside community.toml, it makes the community dir a ledger dir as well
    (validators/vI/validator.key is where `spb-ledger run` looks for validator I's key).
    """
    return Genesis.build(
        [bytes.fromhex(community.ca_pk)],
        {bytes.fromhex(a.pk): units for a in community.accounts},
        [bytes.fromhex(v.pk) for v in community.validators],
        block_ms,
    )


def _meter(
    root: Path,
    i: int,
    ca: SigningKey,
    has_account: bool,
    now_ms: int,
    validity: tuple[int, int],
    validators: list[Validator],
) -> Meter:
    """One meter's state dir, self-contained so it can be flashed later: its keys, and the
    CA and validator keys it checks births, CoEs and ledger statuses against."""
    mid = meter_id(i)
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
    }
    write_public(home / "meter.toml", _METER_HEADER.format(id=mid) + tomli_w.dumps(_without_none(meter)))
    return Meter(mid, public_hex(device), account_pk, cert.nbf, cert.exp)


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
    parts = [_COMMUNITY_HEADER, tomli_w.dumps({"ca": {"pk": c.ca_pk}})]
    for name, rows in (("meters", c.meters), ("accounts", c.accounts), ("validators", c.validators)):
        parts += [f"\n[[{name}]]\n{tomli_w.dumps(_without_none(asdict(row)))}" for row in rows]
    return "".join(parts)


def _without_none(d: dict) -> dict:
    """TOML has no null: an absent key means "none"."""
    return {k: v for k, v in d.items() if v is not None}
