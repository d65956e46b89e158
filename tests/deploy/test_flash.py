"""spb-deploy flash-meter: every file, mode and owner on a fake Raspberry Pi OS card, config.txt
edits, idempotency, refusals and the units under systemd-analyze (a real disk image, loop
mounted: tests/system/test_flash_image.py)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.flash import enable_interfaces
from deploy.rootfs import RUNTIME, RootfsError, RootTree
from tests.support.rootfs import (
    CONFIG_TXT,
    FREE_ID,
    GROUP,
    HOSTS,
    PASSWD,
    SHADOW,
    SHADOW_GID,
    exposure,
    make_card,
    pi_community,
    tree,
    verify_units,
)


@pytest.fixture(scope="module")
def community(tmp_path_factory) -> Path:
    return pi_community(tmp_path_factory.mktemp("community"))


@pytest.fixture
def stand_in_wheel(tmp_path) -> Path:
    """A stand-in for this project's wheel: flash-meter copies its bytes and names it in
    install.sh, nothing more, so these tests need no build (the real wheel is flashed in
    tests/system/test_flash_image.py)."""
    path = tmp_path / "spb_energy-0.0.0-py3-none-any.whl"
    path.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    return path


@pytest.fixture
def card(tmp_path) -> tuple[Path, Path]:
    if os.geteuid() != 0:
        pytest.skip("flashing sets the image's owners: needs root")
    return make_card(tmp_path / "card")


def flash(community: Path, card: tuple[Path, Path], wheel: Path, meter: str = "m0001", *extra: str) -> int:
    boot, root = card
    return main(
        [
            "flash-meter",
            str(community),
            meter,
            "--boot",
            str(boot),
            "--root",
            str(root),
            "--broker",
            "broker.example:8883",
            "--wheel",
            str(wheel),
            *extra,
        ]
    )


def test_every_file_mode_and_owner(community, card, stand_in_wheel, capsys):
    boot, root = card
    assert flash(community, card, stand_in_wheel) == 0
    data = stand_in_wheel.read_bytes()
    stamp = hashlib.sha256(data).hexdigest()[:16]
    state = community / "meters/m0001"
    secrets = sorted(p.name for p in state.glob("*.key"))
    public = sorted(
        p.name for p in state.iterdir() if p.suffix != ".key" and p.name.endswith((".cbor", ".toml", ".crt"))
    )
    assert secrets == ["account.key", "device.key", "mqtt.key"]
    assert public == ["ca.crt", "devcert.cbor", "meter.toml", "mqtt.crt"]
    me = (FREE_ID, FREE_ID)
    expected = {  # path: (mode, (uid, gid)) of everything flash-meter adds to the root tree
        "var": (0o755, (0, 0)),
        "var/lib": (0o755, (0, 0)),
        "var/lib/spb-meter": (0o700, me),
        **{f"var/lib/spb-meter/{n}": (0o600, me) for n in secrets},
        **{f"var/lib/spb-meter/{n}": (0o644, me) for n in public},
        "opt": (0o755, (0, 0)),
        "opt/spb-meter": (0o755, (0, 0)),
        f"opt/spb-meter/{stand_in_wheel.name}": (0o644, (0, 0)),
        "opt/spb-meter/install.sh": (0o755, (0, 0)),
        **dict.fromkeys(
            (
                "etc/systemd",
                "etc/systemd/system",
                "etc/systemd/journald.conf.d",
                "etc/systemd/system/multi-user.target.wants",
                "etc/systemd/system/sysinit.target.wants",
                "etc/systemd/system/systemd-time-wait-sync.service.d",
            ),
            (493, (0, 0)),
        ),
        "etc/systemd/system/spb-meter.service": (0o644, (0, 0)),
        "etc/systemd/system/spb-meter-install.service": (0o644, (0, 0)),
        "etc/systemd/journald.conf.d/spb-meter.conf": (0o644, (0, 0)),
        "etc/systemd/system/multi-user.target.wants/spb-meter.service": (0o777, (0, 0)),
        "etc/systemd/system/sysinit.target.wants/systemd-time-wait-sync.service": (0o777, (0, 0)),
        "etc/systemd/system/systemd-time-wait-sync.service.d/spb-meter.conf": (0o644, (0, 0)),
        "etc/passwd": (0o644, (0, 0)),
        "etc/group": (0o644, (0, 0)),
        "etc/hosts": (0o644, (0, 0)),
        "etc/hostname": (0o644, (0, 0)),
        "etc": (0o755, (0, 0)),
        "etc/shadow": (0o640, (0, SHADOW_GID)),
        "etc/gshadow": (0o640, (0, SHADOW_GID)),
    }
    got = tree(root)
    assert {name: (mode, (uid, gid)) for name, (_, mode, uid, gid, _, _) in got.items()} == expected
    for name in secrets + public:
        assert got[f"var/lib/spb-meter/{name}"][5] == (state / name).read_bytes(), name
    assert not any(Path(n).match(f"var/lib/spb-meter/{p}") for n in got for p in RUNTIME)
    assert got[f"opt/spb-meter/{stand_in_wheel.name}"][5] == data
    assert (
        got["etc/systemd/system/multi-user.target.wants/spb-meter.service"][5]
        == "/etc/systemd/system/spb-meter.service"
    )
    assert (  # enabled, so that time-sync.target waits for NTP to set the clock
        got["etc/systemd/system/sysinit.target.wants/systemd-time-wait-sync.service"][5]
        == "/usr/lib/systemd/system/systemd-time-wait-sync.service"
    )
    assert b"\nTimeoutStartSec=5min\n" in got["etc/systemd/system/systemd-time-wait-sync.service.d/spb-meter.conf"][5]

    assert (root / "etc/hostname").read_text() == "m0001\n"
    assert (root / "etc/hosts").read_text() == HOSTS.replace("127.0.1.1\t\traspberrypi", "127.0.1.1\tm0001")
    account = f"spb-meter:x:{FREE_ID}:{FREE_ID}:spb-energy:/var/lib/spb-meter:/usr/sbin/nologin\n"
    assert (root / "etc/passwd").read_text() == PASSWD + account
    assert (root / "etc/shadow").read_text() == SHADOW + "spb-meter:!:::::::\n"
    groups = (
        GROUP.replace("video:x:44:pi", "video:x:44:pi,spb-meter")
        .replace("input:x:105:pi", "input:x:105:pi,spb-meter")
        .replace("spi:x:999:pi", "spi:x:999:pi,spb-meter")
        .replace("i2c:x:996:pi", "i2c:x:996:pi,spb-meter")
        .replace("gpio:x:995:pi", "gpio:x:995:pi,spb-meter")
    )
    assert (root / "etc/group").read_text() == groups + f"spb-meter:x:{FREE_ID}:\n"
    gshadow = (root / "etc/gshadow").read_text().splitlines()
    assert gshadow[-1] == "spb-meter:!::" and "gpio:!::pi,spb-meter" in gshadow and "root:!::" in gshadow

    unit = (root / "etc/systemd/system/spb-meter.service").read_text()
    assert (
        "\nExecStart=/opt/spb-meter/venv/bin/spb-meter run --state-dir /var/lib/spb-meter "
        "--broker mqtts://broker.example:8883 --adc mcp3008 --display sensehat\n"
    ) in unit
    for line in (
        "User=spb-meter",
        "SupplementaryGroups=gpio spi i2c video input",
        "Restart=always",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/spb-meter",
        "NoNewPrivileges=yes",
        "Wants=network-online.target time-sync.target spb-meter-install.service",
        "After=network-online.target time-sync.target spb-meter-install.service",
        "WantedBy=multi-user.target",
    ):
        assert f"\n{line}\n" in unit, line
    assert not re.search(r"^(PrivateDevices|ProtectClock|DeviceAllow|DevicePolicy)=", unit, re.M)
    install_unit = (root / "etc/systemd/system/spb-meter-install.service").read_text()
    assert f"\nConditionPathExists=!/opt/spb-meter/venv/.installed-{stamp}\n" in install_unit
    assert "\nExecStart=/opt/spb-meter/install.sh\n" in install_unit
    script = (root / "opt/spb-meter/install.sh").read_text()
    assert f'pip install --disable-pip-version-check "/opt/spb-meter/{stand_in_wheel.name}[pi]"\n' in script
    assert f"touch /opt/spb-meter/venv/.installed-{stamp}\n" in script
    journald = (root / "etc/systemd/journald.conf.d/spb-meter.conf").read_text()
    assert "\nSystemMaxUse=64M\n" in journald and "\nMaxRetentionSec=1month\n" in journald

    assert (boot / "config.txt").read_bytes() == (
        CONFIG_TXT.replace(b"#dtparam=i2c_arm=on", b"dtparam=i2c_arm=on").replace(b"#dtparam=spi=on", b"dtparam=spi=on")
    )
    assert [p.name for p in boot.iterdir()] == ["config.txt"]
    out = capsys.readouterr().out
    assert f"boot {boot}: 1 written, 0 unchanged" in out and "  /etc/hostname" in out


def test_second_flash_changes_nothing(community, card, stand_in_wheel, capsys):
    boot, root = card
    assert flash(community, card, stand_in_wheel) == 0
    before = tree(boot), tree(root)
    capsys.readouterr()
    assert flash(community, card, stand_in_wheel) == 0
    assert (tree(boot), tree(root)) == before
    out = capsys.readouterr().out
    assert f"boot {boot}: 0 written, 1 unchanged\nroot {root}: 0 written, " in out


def test_existing_user_and_loosened_files_are_reused_and_fixed(community, card, stand_in_wheel):
    """A card flashed before keeps its spb-meter ids; modes someone loosened are tightened."""
    _, root = card
    with open(root / "etc/passwd", "a") as f:
        f.write("spb-meter:x:990:991:meter:/var/lib/spb-meter:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as f:
        f.write("spb-meter:x:991:\n")
    assert flash(community, card, stand_in_wheel) == 0
    key = root / "var/lib/spb-meter/device.key"
    assert (key.stat().st_uid, key.stat().st_gid) == (990, 991)
    for table in ("passwd", "group", "shadow", "gshadow"):
        rows = (root / "etc" / table).read_text().splitlines()
        assert [r.split(":")[0] for r in rows].count("spb-meter") == 1, table
    key.chmod(0o644)
    os.chown(key, 0, 0)
    assert flash(community, card, stand_in_wheel) == 0
    assert (stat.S_IMODE(key.stat().st_mode), key.stat().st_uid, key.stat().st_gid) == (0o600, 990, 991)


def test_unknown_meter_is_refused_before_anything_is_written(community, card, stand_in_wheel, capsys):
    boot, root = card
    before = tree(boot), tree(root)
    assert flash(community, card, stand_in_wheel, "m0009") == 1
    assert f"{community}/meters/m0009 is not a meter's state dir" in capsys.readouterr().err
    assert (tree(boot), tree(root)) == before


@pytest.mark.parametrize("argv", [["--boot", "b"], ["--root", "r"], [], ["--image", "i", "--root", "r"]])
def test_partitions_or_image_are_required(community, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["flash-meter", str(community), "m0001", "--broker", "h:8883", *argv])
    assert exit_.value.code == 2 and "give --boot and --root, or --image" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../m0001", "mqtt://h:1"])
def test_bad_meter_id_or_plain_broker_is_a_usage_error(community, bad):
    meter, broker = (bad, "h:8883") if bad.startswith(".") else ("m0001", bad)
    with pytest.raises(SystemExit) as exit_:
        main(["flash-meter", str(community), meter, "--root", "r", "--boot", "b", "--broker", broker])
    assert exit_.value.code == 2


def test_symlink_out_of_the_image_is_refused(community, card, stand_in_wheel, tmp_path, capsys):
    _, root = card
    outside = tmp_path / "host-opt"
    outside.mkdir()
    (root / "opt").symlink_to(outside)
    assert flash(community, card, stand_in_wheel) == 1
    assert "leads out of" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "before, after",
    [
        (b"dtparam=spi=off\ndtparam=i2c_arm\n", b"dtparam=spi=on\ndtparam=i2c_arm\n"),
        (
            b"#dtparam=spi=on\r\n[pi4]\n#dtparam=i2c_arm=on\n",
            b"dtparam=spi=on\r\n[pi4]\n#dtparam=i2c_arm=on\n[all]\ndtparam=i2c_arm=on\n",
        ),
        (b"arm_64bit=1", b"arm_64bit=1\ndtparam=spi=on\ndtparam=i2c_arm=on\n"),
        (
            b"dtparam=spi=on\n#dtparam=spi=on\ndtparam=i2c_arm=on\n",
            b"dtparam=spi=on\n#dtparam=spi=on\ndtparam=i2c_arm=on\n",
        ),
        (b"dtparam=spi=on\n[all]\ndtparam=spi=off\n", b"dtparam=spi=on\n[all]\ndtparam=spi=on\ndtparam=i2c_arm=on\n"),
    ],
)
def test_config_txt_edits(before, after):
    """Only lines every Pi reads count; the last setting wins; nothing else changes."""
    assert enable_interfaces(before) == after
    assert enable_interfaces(after) == after


def test_units_pass_systemd_analyze_verify(community, card, stand_in_wheel, tmp_path):
    assert flash(community, card, stand_in_wheel) == 0
    vroot = verify_units(card[1], ["spb-meter.service", "spb-meter-install.service"], tmp_path)
    assert exposure(vroot, "spb-meter.service") <= 2.0  # 9.2 without HARDENING


def test_writing_a_tree_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RootfsError, match="needs root"):
        RootTree(tmp_path)
