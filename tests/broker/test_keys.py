"""broker.keys: key files are created whole and 0600, never replaced, and survive crashes."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from broker.keys import KeyFileError, load_key, write_new_key

REPO = Path(__file__).resolve().parents[2]


def test_new_key_is_0600_and_kept(tmp_path):
    path = tmp_path / "d" / "device.key"
    key = write_new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(write_new_key(path)) == bytes(key) == bytes(load_key(path))
    assert os.listdir(path.parent) == ["device.key"]  # no temp file left behind


def test_crash_before_the_key_is_complete_leaves_no_key(tmp_path):
    """The process dies while the seed is not yet durable: the next run makes a key, no error."""
    path = tmp_path / "device.key"
    crash = (
        "import os, sys; from pathlib import Path; from broker.keys import write_new_key; "
        "os.fsync = lambda fd: os._exit(3); write_new_key(Path(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", crash, str(path)], cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 3
    assert not path.exists()
    [leftover] = tmp_path.iterdir()  # the crash state: an ignored temp file
    key = write_new_key(path)
    assert bytes(load_key(path)) == bytes(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["device.key", leftover.name])


def test_losing_a_race_returns_the_winners_key(tmp_path, monkeypatch):
    """Another run's key appears just before ours is linked in: ours is dropped, theirs returned."""
    path = tmp_path / "device.key"
    winner = SigningKey.generate()
    link = os.link

    def link_after_the_winner(src, dst):
        Path(dst).write_text(bytes(winner).hex() + "\n")
        link(src, dst)

    monkeypatch.setattr(os, "link", link_after_the_winner)
    assert bytes(write_new_key(path)) == bytes(winner)
    assert os.listdir(tmp_path) == ["device.key"]


def test_new_entry_is_fsynced_in_its_directory(tmp_path, monkeypatch):
    """Without the directory fsync a crash can lose the key's name although its data is on disk."""
    path = tmp_path / "device.key"
    fsync, synced_dir_holding_key = os.fsync, []

    def spy(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dir_holding_key.append(path.exists())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_new_key(path)
    assert synced_dir_holding_key == [True]


@pytest.mark.parametrize("content", [b"", b"abc\n", b"\xff\xfe", (b"00" * 31 + b"\n")])
def test_malformed_key_file_is_reported_never_replaced(tmp_path, content):
    path = tmp_path / "device.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=re.escape(str(path))):
        write_new_key(path)
    assert path.read_bytes() == content
