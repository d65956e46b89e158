"""`spb-deploy flash-meter`: make a Raspberry Pi OS (Bookworm) SD card or image a meter.

Everything goes into the mounted partitions, nothing runs on the card until it boots: SPI
and I2C on, the hostname, a `spb-meter` system user, the meter's state dir, the project's
wheel with a first-boot install, and a hardened spb-meter.service that starts once NTP has
set the clock (or gave up after TIME_SYNC_WAIT).
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import subprocess
import tempfile
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from pathlib import Path

from broker.args import BrokerUrl, tls_broker
from deploy.bus import meter_id_arg
from deploy.rootfs import HARDENING, Install, RootfsError, RootTree, build_wheel, journald_limits

USER = "spb-meter"
STATE = "/var/lib/spb-meter"
INSTALL = Install(prefix="/opt/spb-meter", extras="pi", apt=("python3-venv", "python3-sense-hat"))
# The groups owning /dev/gpiochip*, /dev/spidev*, /dev/i2c-*, the Sense HAT's /dev/fb* and its joystick.
DEVICE_GROUPS = ("gpio", "spi", "i2c", "video", "input")
INTERFACES = ("spi", "i2c_arm")  # the MCP3008 is on SPI; the Sense HAT's sensors on I2C
# time-sync.target means "NTP has set the clock" only with this enabled; Raspberry Pi OS ships
# it (systemd-timesyncd sets the clock), disabled. Its [Install] says WantedBy=sysinit.target.
TIME_WAIT_SYNC = "systemd-time-wait-sync.service"
TIME_SYNC_WAIT = "5min"  # how long a booting meter waits for NTP before it meters anyway


def enable_interfaces(config: bytes, params: tuple[str, ...] = INTERFACES) -> bytes:
    """config.txt with `dtparam=P=on` for each P: a commented or `=off` line in the part read
    by every Pi (before any [filter] or after [all]) is switched on in place, else one is
    appended; every other byte stays. Later lines win in config.txt, so the last one counts."""
    lines = config.splitlines(keepends=True)
    for param in params:
        setting = re.compile(rb"(#\s*)?dtparam=" + re.escape(param.encode()) + rb"(=\w*)?\s*")
        every_pi, candidate, on = True, None, False
        for i, line in enumerate(lines):
            text = line.rstrip(b"\r\n")
            if text.startswith(b"["):
                every_pi = text.strip() == b"[all]"
            elif every_pi and (match := setting.fullmatch(text)):
                active = match[1] is None
                if active:
                    on = match[2] in (None, b"=on", b"=true", b"=yes", b"=okay")
                if active or candidate is None or lines[candidate].startswith(b"#"):
                    candidate = i
        if on:
            continue
        wanted = b"dtparam=" + param.encode() + b"=on"
        if candidate is not None:
            lines[candidate] = wanted + lines[candidate][len(lines[candidate].rstrip(b"\r\n")) :]
        else:
            if lines and not lines[-1].endswith(b"\n"):
                lines[-1] += b"\n"
            if not every_pi:
                lines.append(b"[all]\n")
            lines.append(wanted + b"\n")
    return b"".join(lines)


def set_hosts_name(hosts: bytes, name: str) -> bytes:
    """/etc/hosts with `127.0.1.1` naming this host, as Debian's installer writes it."""
    lines = hosts.decode().splitlines(keepends=True)
    entry = f"127.0.1.1\t{name}\n"
    for i, line in enumerate(lines):
        if line.split()[:1] == ["127.0.1.1"]:
            lines[i] = entry
            return "".join(lines).encode()
    return hosts + (b"\n" if hosts and not hosts.endswith(b"\n") else b"") + entry.encode()


def meter_unit(meter: str, broker: BrokerUrl, groups: tuple[str, ...]) -> str:
    host = f"[{broker.host}]" if ":" in broker.host else broker.host
    devices = f"SupplementaryGroups={' '.join(groups)}\n" if groups else ""
    command = f"run --state-dir {STATE} --broker mqtts://{host}:{broker.port} --adc mcp3008 --display sensehat"
    return f"""\
# Written by `spb-deploy flash-meter`; re-flashing replaces it.
[Unit]
Description=spb-energy meter {meter}
# time-sync.target: signed births and readings carry the NTP time, not what a Pi without a
# battery clock boots with (edge.clock_check still refuses a clock before the devcert's).
Wants=network-online.target time-sync.target {INSTALL.service}
After=network-online.target time-sync.target {INSTALL.service}
# A meter never gives up: at first boot it waits for the install, later for the hardware.
StartLimitIntervalSec=0

[Service]
ExecStart={INSTALL.bin("spb-meter")} {command}
User={USER}
Group={USER}
{devices}# lgpio makes its notification pipes in the working directory.
WorkingDirectory={STATE}
ReadWritePaths={STATE}
Restart=always
RestartSec=5
{HARDENING}\
# Not PrivateDevices= nor ProtectClock= (it implies DeviceAllow=char-rtc): either would close
# /dev/spidev*, /dev/i2c-*, /dev/gpiochip*, /dev/fb* and /dev/input to the meter.

[Install]
WantedBy=multi-user.target
"""


def time_wait_sync_limit() -> str:
    """A drop-in for systemd-time-wait-sync.service: its wait, unbounded as shipped, ends
    after TIME_SYNC_WAIT, so a meter with no network at boot still meters (a failed wait
    still lets time-sync.target, which only orders, be reached)."""
    return f"""\
# Written by `spb-deploy flash-meter`: spb-meter.service starts after time-sync.target, which
# waits for this service. Without NTP it would wait for ever, and the meter would not meter.
[Service]
TimeoutStartSec={TIME_SYNC_WAIT}
"""


def meter_state(community: Path, meter: str) -> Path:
    state = community / "meters" / meter
    if not (state / "meter.toml").is_file():
        raise RootfsError(f"{state} is not a meter's state dir: run `spb-deploy provision` for it first")
    return state


def flash_meter(state: Path, boot: Path, root: Path, broker: BrokerUrl, wheel: Path) -> tuple[RootTree, RootTree]:
    """Write meter `state` (DIR/meters/<id>) into the mounted boot and root partitions."""
    meter = state.name
    boot_tree, tree = RootTree(boot), RootTree(root)
    boot_tree.edit("config.txt", enable_interfaces)
    tree.file("/etc/hostname", f"{meter}\n".encode())
    tree.edit("/etc/hosts", partial(set_hosts_name, name=meter))
    account = tree.system_user(USER, STATE, DEVICE_GROUPS)
    owner = (account.uid, account.gid)
    tree.dir(STATE, 0o700, owner)
    tree.copy_files(state, STATE, owner)
    INSTALL.write(tree, wheel)
    tree.unit("spb-meter.service", meter_unit(meter, broker, account.groups), enable=("spb-meter.service",))
    tree.link(f"/etc/systemd/system/sysinit.target.wants/{TIME_WAIT_SYNC}", f"/usr/lib/systemd/system/{TIME_WAIT_SYNC}")
    tree.file(f"/etc/systemd/system/{TIME_WAIT_SYNC}.d/spb-meter.conf", time_wait_sync_limit().encode())
    tree.file("/etc/systemd/journald.conf.d/spb-meter.conf", journald_limits("the meter", "64M", "1month").encode())
    return boot_tree, tree


def partitions(image: Path) -> list[tuple[int, int]]:
    """(offset, size) in bytes of the primary partitions of an MBR disk image, which is what
    Raspberry Pi OS ships; mounting by offset needs no partition scanning of loop devices."""
    with open(image, "rb") as f:
        mbr = f.read(512)
    if len(mbr) < 512 or mbr[510:] != b"\x55\xaa":
        raise RootfsError(f"{image} has no MBR partition table: not a Raspberry Pi OS image")
    found = []
    for i in range(4):
        kind, start, sectors = struct.unpack_from("<4xB3xII", mbr, 446 + 16 * i)
        if kind == 0xEE:
            raise RootfsError(f"{image} has a GPT partition table; mount its partitions and use --boot and --root")
        if kind and sectors:
            found.append((start * 512, sectors * 512))
    return found


@contextmanager
def mounted_image(image: Path):
    """The image's first two partitions (boot, root) mounted on fresh dirs until the block ends.

    The mount points are removed with rmdir only: were an unmount to fail, nothing recursive
    may run over the mounted card.
    """
    if os.geteuid() != 0:
        raise RootfsError("--image needs root to mount the image's partitions")
    parts = partitions(image)
    if len(parts) < 2:
        raise RootfsError(f"{image} has {len(parts)} partition(s); a Raspberry Pi OS image has boot and root")
    with ExitStack() as stack:
        points = []
        for name, (offset, size) in zip(("boot", "root"), parts, strict=False):  # an image may have more
            point = Path(tempfile.mkdtemp(prefix=f"spb-flash-{name}-"))
            stack.callback(point.rmdir)
            _run(["mount", "-o", f"loop,offset={offset},sizelimit={size}", str(image), str(point)])
            stack.callback(_run, ["umount", str(point)])
            points.append(point)
        yield points[0], points[1]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RootfsError(f"{' '.join(command)}: {done.stderr.strip()}")


def add_flash_meter(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "flash-meter",
        help="make a Raspberry Pi OS card or image a meter",
        description="Write meter METER_ID of community DIR into a Raspberry Pi OS "
        "(Bookworm) boot and root partition; re-running changes nothing.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("meter", type=meter_id_arg, metavar="METER_ID")
    p.add_argument("--boot", type=Path, metavar="PATH", help="the mounted boot partition (with --root)")
    p.add_argument("--root", type=Path, metavar="PATH", help="the mounted root partition (with --boot)")
    p.add_argument("--image", type=Path, metavar="FILE.img", help="instead of --boot/--root: a disk image (needs root)")
    p.add_argument("--broker", type=tls_broker, required=True, metavar="HOST:PORT", help="the broker's TLS listener")
    p.add_argument("--wheel", type=Path, metavar="FILE", help="this project's wheel (default: build one)")
    p.set_defaults(run=partial(_run_flash, p), expected=(OSError, RootfsError))


def _run_flash(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    on_card = args.boot is not None and args.root is not None
    if not ((args.image is None and on_card) or (args.image is not None and args.boot is None and args.root is None)):
        parser.error("give --boot and --root, or --image")
    state = meter_state(args.dir, args.meter)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or build_wheel(Path(tmp))
        with mounted_image(args.image) if args.image else nullcontext((args.boot, args.root)) as (boot, root):
            trees = flash_meter(state, boot, root, args.broker, wheel)
            for label, tree in zip(("boot", "root"), trees, strict=True):
                print(tree.summary(label))
    return 0
