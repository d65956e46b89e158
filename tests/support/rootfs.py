"""Helpers for tests that write a root tree (spb-deploy flash-meter and server): a fake
Raspberry Pi OS card and a community to flash, snapshots, systemd-analyze on the generated
units, and the project's wheel built once per session."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from deploy.provision import provision
from deploy.rootfs import build_wheel

NOW = 1_750_000_000_000  # when pi_community's devcerts start: a fixed clock
# Raspberry Pi OS Bookworm's config.txt as pi-gen writes it (stage1/00-boot-files).
CONFIG_TXT = b"""\
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""
# ids 999..995 are taken as uids or gids, so the first free system id is 994.
PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
systemd-timesync:x:997:997:systemd Time Synchronization:/:/usr/sbin/nologin
messagebus:x:100:107::/nonexistent:/usr/sbin/nologin
pi:x:1000:1000:,,,:/home/pi:/bin/bash
"""
GROUP = """\
root:x:0:
daemon:x:1:
shadow:x:42:
video:x:44:pi
input:x:105:pi
messagebus:x:107:
systemd-network:x:998:
systemd-timesync:x:997:
spi:x:999:pi
i2c:x:996:pi
gpio:x:995:pi
pi:x:1000:
"""
SHADOW = "root:*:19500:0:99999:7:::\npi:$y$j9T$abc:19500:0:99999:7:::\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\n127.0.1.1\t\traspberrypi\n"
SHADOW_GID = 42
FREE_ID = 994


def write_etc(root: Path, files: list[tuple[str, str, int, int]]) -> None:
    """root/etc/NAME for each (name, text, mode, gid), owned by root and that group, as an
    image or a host has its user tables."""
    (root / "etc").mkdir(parents=True)
    for name, text, mode, gid in files:
        path = root / "etc" / name
        path.write_text(text)
        path.chmod(mode)
        os.chown(path, 0, gid)


def make_card(base: Path) -> tuple[Path, Path]:
    """A fake Raspberry Pi OS boot partition and root filesystem, as an image has them."""
    boot, root = base / "boot", base / "root"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_bytes(CONFIG_TXT)
    gshadow = "".join(f"{line.split(':')[0]}:!::{line.split(':')[3]}" for line in GROUP.splitlines(keepends=True))
    write_etc(
        root,
        [
            ("passwd", PASSWD, 0o644, 0),
            ("group", GROUP, 0o644, 0),
            ("shadow", SHADOW, 0o640, SHADOW_GID),
            ("gshadow", gshadow, 0o640, SHADOW_GID),
            ("hosts", HOSTS, 0o644, 0),
            ("hostname", "raspberrypi\n", 0o644, 0),
        ],
    )
    return boot, root


def pi_community(root: Path) -> Path:
    """Two provisioned meters; m0001 has run, so its dir also holds what `spb-meter run` made."""
    provision(root, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=30)
    for name in ("meter.db", "meter.db-wal", "meter.db-shm", "run.lock", "display.ans", ".lgd-nfy0"):
        (root / "meters/m0001" / name).write_bytes(b"runtime")
    return root


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: (kind, mode, uid, gid, mtime_ns, bytes or link target)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        snapshot[str(path.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            data,
        )
    return snapshot


def verify_units(root: Path, units: list[str], scratch: Path) -> Path:
    """systemd-analyze verify on a copy of `root` with this machine's system units (targets)
    and a stub for each program its units run (a first boot installs them); returns the copy. verify
    exits 0 on unknown keys and bad values, so its output must be empty too."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    vroot = scratch / "verify"
    shutil.copytree(root, vroot, symlinks=True)
    shutil.copytree("/usr/lib/systemd/system", vroot / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    for unit in units:
        text = (vroot / "etc/systemd/system" / re.sub(r"@[^.]*\.", "@.", unit)).read_text()
        for program in re.findall(r"^Exec\w+=(\S+)", text, re.M):
            stub = vroot / program.lstrip("/")
            if not stub.exists():
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={vroot}", "--man=no", "--generators=no", *units],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    return vroot


def exposure(vroot: Path, unit: str) -> float:
    """systemd-analyze security's overall exposure of a unit (0 locked down .. 10 unprotected)."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={vroot}", "--no-pager", unit],
        capture_output=True,
        text=True,
    )
    return float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)[1])


def session_wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once per test session however many modules ask for it."""
    out = tmp_path_factory.getbasetemp() / "wheel"
    if not out.exists():
        out.mkdir()
        build_wheel(out)
    return next(out.glob("*.whl"))
