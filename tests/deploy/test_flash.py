"""spb-deploy flash-meter: every file, mode and owner on a fake Raspberry Pi OS card, config.txt
edits, idempotency, refusals, the units under systemd-analyze, and a real disk image."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.flash import enable_interfaces, mounted_image
from deploy.provision import provision
from deploy.rootfs import RUNTIME, RootfsError, RootTree
from tests.support.rootfs import exposure, tree, verify_units

NOW = 1_750_000_000_000
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


def make_card(base: Path) -> tuple[Path, Path]:
    """A fake Raspberry Pi OS boot partition and root filesystem, as an image has them."""
    boot, root = base / "boot", base / "root"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_bytes(CONFIG_TXT)
    (root / "etc").mkdir(parents=True)
    for name, text, mode, gid in (
        ("passwd", PASSWD, 0o644, 0),
        ("group", GROUP, 0o644, 0),
        ("shadow", SHADOW, 0o640, SHADOW_GID),
        ("gshadow", "", 0o640, SHADOW_GID),
        ("hosts", HOSTS, 0o644, 0),
        ("hostname", "raspberrypi\n", 0o644, 0),
    ):
        path = root / "etc" / name
        path.write_text(
            text
            if name != "gshadow"
            else "".join(f"{line.split(':')[0]}:!::{line.split(':')[3]}" for line in GROUP.splitlines(keepends=True))
        )
        path.chmod(mode)
        os.chown(path, 0, gid)
    return boot, root


@pytest.fixture(scope="module")
def community(tmp_path_factory) -> Path:
    """Two meters; m0001 has run, so its dir also holds what `spb-meter run` made."""
    root = tmp_path_factory.mktemp("community")
    provision(root, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=30)
    for name in ("meter.db", "meter.db-wal", "meter.db-shm", "run.lock", "display.ans", ".lgd-nfy0"):
        (root / "meters/m0001" / name).write_bytes(b"runtime")
    return root


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


def test_every_file_mode_and_owner(community, card, wheel, capsys):
    boot, root = card
    assert flash(community, card, wheel) == 0
    data = wheel.read_bytes()
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
        f"opt/spb-meter/{wheel.name}": (0o644, (0, 0)),
        "opt/spb-meter/install.sh": (0o755, (0, 0)),
        **dict.fromkeys(
            (
                "etc/systemd",
                "etc/systemd/system",
                "etc/systemd/journald.conf.d",
                "etc/systemd/system/multi-user.target.wants",
            ),
            (493, (0, 0)),
        ),
        "etc/systemd/system/spb-meter.service": (0o644, (0, 0)),
        "etc/systemd/system/spb-meter-install.service": (0o644, (0, 0)),
        "etc/systemd/journald.conf.d/spb-meter.conf": (0o644, (0, 0)),
        "etc/systemd/system/multi-user.target.wants/spb-meter.service": (0o777, (0, 0)),
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
    assert got[f"opt/spb-meter/{wheel.name}"][5] == data
    assert (
        got["etc/systemd/system/multi-user.target.wants/spb-meter.service"][5]
        == "/etc/systemd/system/spb-meter.service"
    )

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
        "Wants=network-online.target spb-meter-install.service",
        "WantedBy=multi-user.target",
    ):
        assert f"\n{line}\n" in unit, line
    assert not re.search(r"^(PrivateDevices|ProtectClock|DeviceAllow|DevicePolicy)=", unit, re.M)
    install_unit = (root / "etc/systemd/system/spb-meter-install.service").read_text()
    assert f"\nConditionPathExists=!/opt/spb-meter/venv/.installed-{stamp}\n" in install_unit
    assert "\nExecStart=/opt/spb-meter/install.sh\n" in install_unit
    script = (root / "opt/spb-meter/install.sh").read_text()
    assert f'pip install --disable-pip-version-check "/opt/spb-meter/{wheel.name}[pi]"\n' in script
    assert f"touch /opt/spb-meter/venv/.installed-{stamp}\n" in script
    journald = (root / "etc/systemd/journald.conf.d/spb-meter.conf").read_text()
    assert "\nSystemMaxUse=64M\n" in journald and "\nMaxRetentionSec=1month\n" in journald

    assert (boot / "config.txt").read_bytes() == (
        CONFIG_TXT.replace(b"#dtparam=i2c_arm=on", b"dtparam=i2c_arm=on").replace(b"#dtparam=spi=on", b"dtparam=spi=on")
    )
    assert [p.name for p in boot.iterdir()] == ["config.txt"]
    out = capsys.readouterr().out
    assert f"boot {boot}: 1 written, 0 unchanged" in out and "  /etc/hostname" in out


def test_second_flash_changes_nothing(community, card, wheel, capsys):
    boot, root = card
    assert flash(community, card, wheel) == 0
    before = tree(boot), tree(root)
    capsys.readouterr()
    assert flash(community, card, wheel) == 0
    assert (tree(boot), tree(root)) == before
    out = capsys.readouterr().out
    assert f"boot {boot}: 0 written, 1 unchanged\nroot {root}: 0 written, " in out


def test_existing_user_and_loosened_files_are_reused_and_fixed(community, card, wheel):
    """A card flashed before keeps its spb-meter ids; modes someone loosened are tightened."""
    _boot, root = card
    with open(root / "etc/passwd", "a") as f:
        f.write("spb-meter:x:990:991:meter:/var/lib/spb-meter:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as f:
        f.write("spb-meter:x:991:\n")
    assert flash(community, card, wheel) == 0
    key = root / "var/lib/spb-meter/device.key"
    assert (key.stat().st_uid, key.stat().st_gid) == (990, 991)
    for table in ("passwd", "group", "shadow", "gshadow"):
        rows = (root / "etc" / table).read_text().splitlines()
        assert [r.split(":")[0] for r in rows].count("spb-meter") == 1, table
    key.chmod(0o644)
    os.chown(key, 0, 0)
    assert flash(community, card, wheel) == 0
    assert (stat.S_IMODE(key.stat().st_mode), key.stat().st_uid, key.stat().st_gid) == (0o600, 990, 991)


def test_unknown_meter_is_refused_before_anything_is_written(community, card, wheel, capsys):
    boot, root = card
    before = tree(boot), tree(root)
    assert flash(community, card, wheel, "m0009") == 1
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


def test_symlink_out_of_the_image_is_refused(community, card, wheel, tmp_path, capsys):
    _boot, root = card
    outside = tmp_path / "host-opt"
    outside.mkdir()
    (root / "opt").symlink_to(outside)
    assert flash(community, card, wheel) == 1
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


def test_units_pass_systemd_analyze_verify(community, card, wheel, tmp_path):
    assert flash(community, card, wheel) == 0
    vroot = verify_units(card[1], ["spb-meter.service", "spb-meter-install.service"], tmp_path)
    assert exposure(vroot, "spb-meter.service") <= 2.0  # 9.2 without HARDENING


def test_flash_an_image(community, wheel, tmp_path, capsys):
    """A two-partition MBR image, both ext4 here (this kernel may lack vfat): flashed, then
    mounted again to look. Needs root, mkfs.ext4 and loop mounts."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4")
    boot, root = make_card(tmp_path / "card")
    image = tmp_path / "pi.img"
    layout = [(2048, 16 * 2048, boot), (18 * 2048, 40 * 2048, root)]  # start and size in sectors
    with open(image, "wb") as f:
        f.truncate(60 * 2048 * 512)
        mbr = bytearray(512)
        for i, (kind, (start, size, _)) in enumerate(zip((0x0C, 0x83), layout, strict=True)):
            struct.pack_into("<4xB3xII", mbr, 446 + 16 * i, kind, start, size)
        mbr[510:] = b"\x55\xaa"
        f.write(mbr)
    for start, size, content in layout:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", f"offset={start * 512}", "-d", str(content), str(image), f"{size // 2}k"],
            check=True,
            capture_output=True,
        )
    try:
        with mounted_image(image):
            pass
    except RootfsError as exc:
        pytest.skip(f"cannot loop-mount here: {exc}")
    argv = ["flash-meter", str(community), "m0002", "--image", str(image), "--broker", "b:8883", "--wheel", str(wheel)]
    assert main(argv) == 0
    with mounted_image(image) as (boot_part, root_part):
        assert (root_part / "etc/hostname").read_text() == "m0002\n"
        assert b"\ndtparam=spi=on\n" in (boot_part / "config.txt").read_bytes()
        assert (root_part / "var/lib/spb-meter/device.key").read_bytes() == (
            community / "meters/m0002/device.key"
        ).read_bytes()
        snapshot = tree(boot_part), tree(root_part)
    assert main(argv) == 0
    with mounted_image(image) as (boot_part, root_part):
        assert (tree(boot_part), tree(root_part)) == snapshot
    assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def test_writing_a_tree_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RootfsError, match="needs root"):
        RootTree(tmp_path)
