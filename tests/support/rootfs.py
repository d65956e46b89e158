"""Helpers for tests that write a root tree (spb-deploy flash-meter and server): snapshots,
systemd-analyze on the generated units, and the project's wheel built once per session."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from deploy.rootfs import build_wheel


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
