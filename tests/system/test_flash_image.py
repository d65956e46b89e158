"""spb-deploy flash-meter on a real disk image: loop-mounted, flashed with this project's
wheel, mounted again to look, and flashed again to no change (the file layout itself, on a
fake card: tests/deploy/test_flash.py)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from deploy.cli import main
from deploy.flash import mounted_image
from deploy.rootfs import RootfsError
from tests.support.rootfs import make_card, pi_community, tree


def test_flash_an_image(wheel, tmp_path):
    """A two-partition MBR image, both ext4 here (this kernel may lack vfat): flashed, then
    mounted again to look. Needs root, mkfs.ext4 and loop mounts."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4")
    community = pi_community(tmp_path / "community")
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
