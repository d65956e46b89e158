"""Writing into a mounted root filesystem (a meter's SD card, a server's /) idempotently.

Shared by `spb-deploy flash-meter` and `spb-deploy server`. Owners are the image's numeric
ids (its etc/passwd, not this machine's). A file whose bytes, mode and owner are already
right is not touched, so a re-run leaves the tree exactly as it was, mtimes included.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.keys import write_file

ROOT = (0, 0)
# Debian's system id range, taken from the top like `useradd --system` does.
SYSTEM_IDS = range(999, 99, -1)
UNIT_DIR = "/etc/systemd/system"
# What running services make beside their keys (stores, locks, pids, logs, the meter's display
# frames, hidden temp and lgpio pipe files): never copied onto a target.
RUNTIME = ("*.db", "*.db-*", "*.lock", "*.pid", "*.log", "display.*", ".*")
# What every spb-energy service may not do; each unit adds where it may write and what it needs.
HARDENING = """\
NoNewPrivileges=yes
CapabilityBoundingSet=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
PrivateMounts=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
# Calls a service has no business making fail with EPERM instead of killing it.
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
UMask=0077
"""


class RootfsError(Exception):
    """The target tree or the project cannot be used as asked; the operator's to fix."""


@dataclass(frozen=True, slots=True)
class SystemUser:
    """A Unix user of the image (not a ledger account: that is deploy.provision.Account)."""

    name: str
    uid: int
    gid: int
    groups: tuple[str, ...]  # the supplementary groups asked for that the image has


class RootTree:
    """A mounted filesystem to write into; remembers what it changed, for the summary."""

    def __init__(self, root: Path):
        if os.geteuid() != 0:
            raise RootfsError("writing a root filesystem needs root: its files must belong to the image's users")
        if not root.is_dir():
            raise RootfsError(f"{root} is not a directory")
        self.root = root
        self.changed: dict[str, None] = {}  # ordered sets of names
        self.unchanged: dict[str, None] = {}

    def path(self, name: str) -> Path:
        """`name` ("/etc/hostname") inside the tree; refused if a symlink in the image leads out of it."""
        path = self.root / name.lstrip("/")
        if not path.parent.resolve().is_relative_to(self.root.resolve()):
            raise RootfsError(f"{path} leads out of {self.root} through a symlink")
        return path

    def file(self, name: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = ROOT) -> None:
        path = self.path(name)
        self._parents(path)
        try:
            same = stat.S_ISREG(path.lstat().st_mode) and path.read_bytes() == data
        except FileNotFoundError:
            same = False
        if not same:
            write_file(path, data, mode, replace=True)
            os.chown(path, *owner)
        self._note(name, not same, self._fix(path, mode, owner))

    def edit(self, name: str, change: Callable[[bytes], bytes]) -> None:
        """Rewrite an existing file with `change`, keeping its mode and owner (e.g. etc/shadow's)."""
        path = self.path(name)
        st = path.stat()
        self.file(name, change(path.read_bytes()), stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid))

    def dir(self, name: str, mode: int = 0o755, owner: tuple[int, int] = ROOT) -> None:
        path = self.path(name)
        if path.is_symlink():
            raise RootfsError(f"{path} is a symlink, not a directory to write into")
        self._parents(path)
        made = not path.is_dir()
        if made:
            path.mkdir()
        self._note(name + "/", made, self._fix(path, mode, owner))

    def link(self, name: str, target: str) -> None:
        """A symlink holding `target` as written (absolute in the image, like `systemctl enable`'s)."""
        path = self.path(name)
        self._parents(path)
        same = path.is_symlink() and os.readlink(path) == target
        if not same:
            tmp = path.with_name(f".{path.name}.new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, path)
        self._note(name, not same)

    def copy_files(
        self,
        src: Path,
        dest: str,
        owner: tuple[int, int],
        public_owner: tuple[int, int] | None = None,
        skip: tuple[str, ...] = (),
    ) -> None:
        """Every regular file directly in `src` but RUNTIME and `skip` ones into dir `dest`:
        keys (*.key) 0600 and `owner`'s, the rest 0644 and `public_owner`'s (default `owner`)."""
        for path in sorted(src.iterdir()):
            if (
                path.is_file()
                and not path.is_symlink()
                and not any(fnmatch.fnmatch(path.name, p) for p in RUNTIME + skip)
            ):
                secret = path.suffix == ".key"
                self.file(
                    f"{dest}/{path.name}",
                    path.read_bytes(),
                    0o600 if secret else 0o644,
                    owner if secret or public_owner is None else public_owner,
                )

    def unit(self, name: str, text: str, enable: tuple[str, ...] = ()) -> None:
        """A unit in /etc/systemd/system, enabled for multi-user.target under each name in
        `enable` (the unit's own name, or instances of a template)."""
        self.file(f"{UNIT_DIR}/{name}", text.encode())
        for instance in enable:
            self.link(f"{UNIT_DIR}/multi-user.target.wants/{instance}", f"{UNIT_DIR}/{name}")

    def system_user(self, name: str, home: str, groups: tuple[str, ...] = ()) -> SystemUser:
        """A locked system user with its own group, like `adduser --system --group`; an
        existing entry is kept as it is. Also a member of those of `groups` the image has."""
        users, known = _table(self.path("/etc/passwd")), _table(self.path("/etc/group"))
        row = users.get(name)
        if row:
            uid, gid = int(row[2]), int(row[3])
        else:
            taken = {int(r[2]) for r in users.values()} | {int(r[2]) for r in known.values()}
            free = next((i for i in SYSTEM_IDS if i not in taken), None)
            if free is None:
                raise RootfsError(f"{self.root} has no free system uid for {name}")
            uid = free
            gid = int(known[name][2]) if name in known else uid
        group_tables = ("/etc/group", "/etc/gshadow") if self.path("/etc/gshadow").exists() else ("/etc/group",)
        # /etc/gshadow's row only where the image has that file
        for table, fields in zip(group_tables, ([name, "x", str(gid), ""], [name, "!", "", ""]), strict=False):
            self._add_row(table, name, fields)
        self._add_row("/etc/passwd", name, [name, "x", str(uid), str(gid), "spb-energy", home, "/usr/sbin/nologin"])
        self._add_row("/etc/shadow", name, [name, "!", "", "", "", "", "", "", ""])
        present = tuple(g for g in groups if g in known)
        for group in present:
            for table in group_tables:
                self._add_member(table, group, name)
        return SystemUser(name, uid, gid, present)

    def summary(self, label: str) -> str:
        head = f"{label} {self.root}: {len(self.changed)} written, {len(self.unchanged)} unchanged"
        return "\n".join([head, *(f"  {name}" for name in self.changed)])

    def _add_row(self, table: str, name: str, fields: list[str]) -> None:
        """Append a row to a colon-separated table unless it has one for `name`."""
        self.edit(table, lambda data: data if name in _rows(data) else _appended(data, ":".join(fields)))

    def _add_member(self, table: str, group: str, user: str) -> None:
        """`user` in the member list (4th field) of `group` in etc/group or etc/gshadow."""

        def change(data: bytes) -> bytes:
            lines = data.decode().splitlines(keepends=True)
            for i, line in enumerate(lines):
                fields = line.rstrip("\n").split(":")
                members = [m for m in fields[3].split(",") if m] if len(fields) > 3 else []
                if fields[0] == group and len(fields) > 3 and user not in members:
                    fields[3] = ",".join([*members, user])
                    lines[i] = ":".join(fields) + "\n"
            return "".join(lines).encode()

        self.edit(table, change)

    def _parents(self, path: Path) -> None:
        """Missing parent dirs, made 0755 root like an image's own."""
        missing = [p for p in path.parents if not p.exists() and p.is_relative_to(self.root)]
        for parent in reversed(missing):
            parent.mkdir()
            os.chmod(parent, 0o755)
            os.chown(parent, *ROOT)

    def _fix(self, path: Path, mode: int, owner: tuple[int, int]) -> bool:
        st = path.lstat()
        fixed = False
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
            fixed = True
        if (st.st_uid, st.st_gid) != owner:
            os.chown(path, *owner)
            fixed = True
        return fixed

    def _note(self, name: str, *changes: bool) -> None:
        """A name edited several times (etc/group) is listed once, as changed if it ever was."""
        if any(changes):
            self.changed.setdefault(name)
            self.unchanged.pop(name, None)
        elif name not in self.changed:
            self.unchanged.setdefault(name)


def _rows(data: bytes) -> dict[str, list[str]]:
    return {f[0]: f for f in (line.split(":") for line in data.decode().splitlines()) if f[0]}


def _table(path: Path) -> dict[str, list[str]]:
    return _rows(path.read_bytes())


def _appended(data: bytes, line: str) -> bytes:
    return data + (b"\n" if data and not data.endswith(b"\n") else b"") + line.encode() + b"\n"


def journald_limits(who: str, system_max: str, retention: str) -> str:
    """A journald.conf.d drop-in, so a chatty service cannot fill the disk with logs."""
    return f"""\
# Written by spb-deploy for {who}: logs must not fill the disk.
[Journal]
SystemMaxUse={system_max}
RuntimeMaxUse=16M
MaxRetentionSec={retention}
"""


def build_wheel(out: Path) -> Path:
    """This project as a wheel in `out`, built from a copy of the package sources, so the
    build leaves no build/ or egg-info in a tree someone is editing. SOURCE_DATE_EPOCH makes
    the same sources give the same bytes, so a re-flash finds the wheel unchanged."""
    project = Path(__file__).resolve().parents[1]
    try:
        meta = tomllib.loads((project / "pyproject.toml").read_text())
    except FileNotFoundError:
        raise RootfsError(f"{project} is not a source tree to build a wheel from: pass --wheel FILE") from None
    include = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", meta["project"]["readme"]):
            shutil.copy2(project / name, src / name)
        for package in project.iterdir():
            if package.is_dir() and any(fnmatch.fnmatch(package.name, p) for p in include):
                shutil.copytree(package, src / package.name, ignore=shutil.ignore_patterns("__pycache__"))
        env = {"SOURCE_DATE_EPOCH": "315532800", **os.environ}  # 1980-01-01, the earliest a zip holds
        built = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "-w",
                str(out),
                str(src),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
    if built.returncode != 0:
        raise RootfsError(f"building the wheel failed:\n{built.stderr.strip()}")
    (wheel,) = out.glob("*.whl")  # `out` was empty
    return wheel


@dataclass(frozen=True, slots=True)
class Install:
    """This project in a venv on the target, installed by a oneshot unit at the first boot
    after each flash of a new wheel (the target has the network then, this machine may not
    have the target's architecture)."""

    prefix: str  # /opt/spb-meter: the wheel, install.sh, venv/
    extras: str  # pip extras, e.g. "pi"
    apt: tuple[str, ...]  # Debian packages the target needs first

    @property
    def service(self) -> str:
        return f"{Path(self.prefix).name}-install.service"

    def bin(self, command: str) -> str:
        return f"{self.prefix}/venv/bin/{command}"

    def write(self, tree: RootTree, wheel: Path) -> None:
        data = wheel.read_bytes()
        stamp = f"{self.prefix}/venv/.installed-{hashlib.sha256(data).hexdigest()[:16]}"
        tree.dir(self.prefix)
        tree.file(f"{self.prefix}/{wheel.name}", data)
        tree.file(f"{self.prefix}/install.sh", self._script(wheel.name, stamp).encode(), 0o755)
        tree.unit(self.service, self._unit(stamp))

    def _script(self, wheel: str, stamp: str) -> str:
        requirement = f"{self.prefix}/{wheel}" + (f"[{self.extras}]" if self.extras else "")
        return f"""\
#!/bin/sh
# Written by spb-deploy: installs {wheel} into {self.prefix}/venv.
# {self.service} runs it until it succeeded once for this wheel; it needs the network.
set -eu
missing=""
for package in {" ".join(self.apt)}; do
    dpkg-query -W -f='${{Status}}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
fi
# System site packages: some C libraries' Python bindings (the Sense HAT's RTIMU) come only from apt.
[ -x {self.prefix}/venv/bin/python ] || python3 -m venv --system-site-packages {self.prefix}/venv
{self.prefix}/venv/bin/pip install --disable-pip-version-check "{requirement}"
# A new build may keep the version number: put this wheel's files in place, not only its dependencies.
{self.prefix}/venv/bin/pip install --disable-pip-version-check --no-deps --force-reinstall "{self.prefix}/{wheel}"
touch {stamp}
"""

    def _unit(self, stamp: str) -> str:
        return f"""\
# Written by spb-deploy. Pulled in by the services that run {self.prefix}/venv's commands.
[Unit]
Description=Install spb-energy into {self.prefix}/venv
Wants=network-online.target
After=network-online.target
ConditionPathExists=!{stamp}

[Service]
Type=oneshot
ExecStart={self.prefix}/install.sh
# No network yet, a mirror down: try again until it worked.
Restart=on-failure
RestartSec=30
"""
