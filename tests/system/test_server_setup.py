"""spb-deploy server: every file, mode and owner in a fake Debian root, idempotency, refusals,
and the units under systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from broker import secure
from broker.client import BusClient, TlsFiles
from broker.runtime import free_port
from deploy.cli import main
from deploy.provision import community_genesis, provision
from ledger.genesis import write_genesis
from tests.support.rootfs import exposure, tree, verify_units, write_etc

NOW = 1_750_000_000_000
PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
messagebus:x:100:107::/nonexistent:/usr/sbin/nologin
sshd:x:101:65534::/run/sshd:/usr/sbin/nologin
"""
GROUP = "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nmessagebus:x:107:\nsystemd-network:x:998:\nsystemd-journal:x:999:\n"
SHADOW = "root:*:19500:0:99999:7:::\n"
SHADOW_GID = 42
DEBIAN_MOSQUITTO = "mosquitto:x:105:112::/var/lib/mosquitto:/usr/sbin/nologin\n"


def make_root(base: Path, passwd: str = PASSWD, group: str = GROUP) -> Path:
    """A Debian 12 host's /etc, as far as users go."""
    root = base / "root"
    write_etc(
        root,
        [
            ("passwd", passwd, 0o644, 0),
            ("group", group, 0o644, 0),
            ("shadow", SHADOW, 0o640, SHADOW_GID),
            ("gshadow", "root:*::\n", 0o640, SHADOW_GID),
        ],
    )
    return root


def make_community(base: Path, hosts: tuple[str, ...] = ()) -> Path:
    community = base / "community"
    # Valid for ten years from NOW: the live broker test checks certificates against the real clock.
    provided = provision(
        community, meters=2, accounts=None, validators=2, now_ms=NOW, valid_days=3650, broker_hosts=hosts
    )
    write_genesis(community, community_genesis(provided, 10_000, 200))
    (community / "validators/v0/ledger.db").write_bytes(b"runtime")  # a validator that ran here
    return community


@pytest.fixture(scope="module")
def community(tmp_path_factory) -> Path:
    return make_community(tmp_path_factory.mktemp("server"))


@pytest.fixture
def root(tmp_path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("server setup sets the target's owners: needs root")
    return make_root(tmp_path)


def setup(community: Path, root: Path, wheel: Path, *extra: str) -> int:
    return main(["server", str(community), "--root", str(root), "--wheel", str(wheel), *extra])


def test_every_file_mode_and_owner(community, root, wheel):
    assert setup(community, root, wheel) == 0
    mosquitto = ledger = None
    for row in (root / "etc/passwd").read_text().splitlines():
        name, _, uid, gid = row.split(":")[:4]
        if name in ("mosquitto", "spb-ledger"):
            assert row.endswith(f":/var/lib/{name}:/usr/sbin/nologin"), row
            ids = (int(uid), int(gid))
            mosquitto, ledger = (ids, ledger) if name == "mosquitto" else (mosquitto, ids)
    assert (mosquitto, ledger) == ((997, 997), (996, 996))  # the free system ids from the top
    assert (root / "etc/group").read_text() == GROUP + "mosquitto:x:997:\nspb-ledger:x:996:\n"
    assert (root / "etc/shadow").read_text() == SHADOW + "mosquitto:!:::::::\nspb-ledger:!:::::::\n"
    assert (root / "etc/gshadow").read_text() == "root:*::\nmosquitto:!::\nspb-ledger:!::\n"

    rooted, secret = (0o644, (0, 0)), (0o600, mosquitto)
    lib = {
        f"var/lib/spb-ledger/validators/v{i}/{name}": (0o600 if name.endswith(".key") else 0o644, ledger)
        for i in (0, 1)
        for name in ("validator.key", "mqtt.key", "mqtt.crt", "ca.crt")
    }
    expected = {
        **dict.fromkeys(
            (
                "etc",
                "etc/spb-broker",
                "var",
                "var/lib",
                "opt",
                "opt/spb-energy",
                "etc/systemd",
                "etc/systemd/system",
                "etc/systemd/system/multi-user.target.wants",
                "etc/systemd/journald.conf.d",
                "etc/logrotate.d",
            ),
            (493, (0, 0)),
        ),
        "etc/passwd": rooted,
        "etc/group": rooted,
        "etc/shadow": (0o640, (0, SHADOW_GID)),
        "etc/gshadow": (0o640, (0, SHADOW_GID)),
        **{
            f"etc/spb-broker/{n}": rooted
            for n in ("ca.crt", "server.crt", "crl.pem", "acl", "acl-local", "broker.toml", "mosquitto.conf")
        },
        "etc/spb-broker/server.key": secret,
        "var/lib/spb-broker": (0o700, mosquitto),
        "var/lib/spb-ledger": (0o700, ledger),
        "var/lib/spb-ledger/genesis.cbor": (0o644, ledger),
        "var/lib/spb-ledger/validators": (0o700, ledger),
        "var/lib/spb-ledger/validators/v0": (0o700, ledger),
        "var/lib/spb-ledger/validators/v1": (0o700, ledger),
        **lib,
        f"opt/spb-energy/{wheel.name}": rooted,
        "opt/spb-energy/install.sh": (0o755, (0, 0)),
        **{
            f"etc/systemd/system/{u}": rooted
            for u in ("spb-broker.service", "spb-ledger@.service", "spb-energy-install.service")
        },
        **{
            f"etc/systemd/system/multi-user.target.wants/{u}": (0o777, (0, 0))
            for u in ("spb-broker.service", "spb-ledger@0.service", "spb-ledger@1.service")
        },
        "etc/systemd/system/mosquitto.service": (0o777, (0, 0)),
        "etc/logrotate.d/spb-broker": rooted,
        "etc/systemd/journald.conf.d/spb-energy.conf": rooted,
    }
    got = tree(root)
    assert {name: (mode, (uid, gid)) for name, (_, mode, uid, gid, _, _) in got.items()} == expected

    for name in ("ca.crt", "server.crt", "server.key", "crl.pem", "acl", "acl-local", "broker.toml"):
        assert got[f"etc/spb-broker/{name}"][5] == (community / "broker" / name).read_bytes(), name
    for name in lib:
        assert got[name][5] == (community / name.removeprefix("var/lib/spb-ledger/")).read_bytes(), name
    assert got["var/lib/spb-ledger/genesis.cbor"][5] == (community / "genesis.cbor").read_bytes()
    wants = "etc/systemd/system/multi-user.target.wants/"
    assert got[wants + "spb-ledger@1.service"][5] == "/etc/systemd/system/spb-ledger@.service"
    assert got[wants + "spb-broker.service"][5] == "/etc/systemd/system/spb-broker.service"
    assert got["etc/systemd/system/mosquitto.service"][5] == "/dev/null"

    conf = (root / "etc/spb-broker/mosquitto.conf").read_text()
    settings = secure.BrokerSettings.load(community / "broker")
    assert conf == secure.mosquitto_conf(
        settings, Path("/etc/spb-broker"), Path("/var/lib/spb-broker"), 8883, run_as="mosquitto"
    )
    for line in (
        "listener 8883 ",
        "keyfile /etc/spb-broker/server.key",
        "crlfile /etc/spb-broker/crl.pem",
        "acl_file /etc/spb-broker/acl",
        "persistence_location /var/lib/spb-broker/",
        "user mosquitto",
    ):
        assert f"\n{line}\n" in conf, line
    assert str(community) not in conf
    broker = (root / "etc/systemd/system/spb-broker.service").read_text()
    assert "\nExecStart=/usr/sbin/mosquitto -c /etc/spb-broker/mosquitto.conf\n" in broker
    ledger_unit = (root / "etc/systemd/system/spb-ledger@.service").read_text()
    assert (
        "\nExecStart=/opt/spb-energy/venv/bin/spb-ledger run /var/lib/spb-ledger "
        "--broker mqtts://127.0.0.1:8883 --validator %i\n"
    ) in ledger_unit
    for unit in (broker, ledger_unit):
        for line in (
            "Restart=always",
            "ProtectSystem=strict",
            "PrivateDevices=yes",
            "NoNewPrivileges=yes",
            "WantedBy=multi-user.target",
            "Wants=network-online.target spb-energy-install.service",
        ):
            assert f"\n{line}" in unit, line
    assert (
        "\nAfter=network-online.target spb-energy-install.service spb-broker.service time-sync.target\n" in ledger_unit
    )
    assert "\nUser=spb-ledger\n" in ledger_unit and "\nReadWritePaths=/var/lib/spb-ledger\n" in ledger_unit
    assert "\nUser=mosquitto\n" in broker and "\nReadWritePaths=/var/lib/spb-broker\n" in broker
    script = (root / "opt/spb-energy/install.sh").read_text()
    assert "for package in python3-venv mosquitto logrotate; do" in script
    assert f'pip install --disable-pip-version-check "/opt/spb-energy/{wheel.name}"\n' in script
    assert "\n/var/lib/spb-broker/mosquitto.log {\n" in (root / "etc/logrotate.d/spb-broker").read_text()
    assert "\nSystemMaxUse=1G\n" in (root / "etc/systemd/journald.conf.d/spb-energy.conf").read_text()


def test_second_run_changes_nothing(community, root, wheel, capsys):
    assert setup(community, root, wheel) == 0
    before = tree(root)
    capsys.readouterr()
    assert setup(community, root, wheel) == 0
    assert tree(root) == before
    assert f"root {root}: 0 written, " in capsys.readouterr().out


def test_debian_mosquitto_user_is_reused_and_port_chosen(community, tmp_path, wheel):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = make_root(tmp_path, PASSWD + DEBIAN_MOSQUITTO, GROUP + "mosquitto:x:112:\n")
    assert setup(community, root, wheel, "--broker-port", "9883") == 0
    key = (root / "etc/spb-broker/server.key").stat()
    assert (key.st_uid, key.st_gid) == (105, 112)
    assert (root / "etc/passwd").read_text().count("\nmosquitto:") == 1
    assert "\nlistener 9883 \n" in (root / "etc/spb-broker/mosquitto.conf").read_text()
    assert "--broker mqtts://127.0.0.1:9883 " in (root / "etc/systemd/system/spb-ledger@.service").read_text()


def test_community_without_genesis_is_refused(community, root, tmp_path, wheel, capsys):
    bare = tmp_path / "bare"
    provision(bare, meters=1, accounts=None, validators=1, now_ms=NOW)
    before = tree(root)
    assert setup(bare, root, wheel) == 1
    assert "no broker certificate or no genesis" in capsys.readouterr().err
    assert tree(root) == before


def test_broker_certificate_must_name_loopback(root, tmp_path, wheel, capsys):
    """The ledger dials 127.0.0.1 and checks the broker's certificate names it."""
    community = make_community(tmp_path, hosts=("broker.example",))
    assert setup(community, root, wheel) == 1
    assert "does not name 127.0.0.1" in capsys.readouterr().err


def test_units_pass_systemd_analyze_verify(community, root, wheel, tmp_path):
    assert setup(community, root, wheel) == 0
    vroot = verify_units(
        root,
        ["spb-broker.service", "spb-ledger@0.service", "spb-ledger@1.service", "spb-energy-install.service"],
        tmp_path,
    )
    assert exposure(vroot, "spb-broker.service") <= 1.5
    assert exposure(vroot, "spb-ledger@0.service") <= 1.5


def in_tree(root: Path, uid: int, gid: int, command: list[str], **popen) -> subprocess.Popen:
    """`command` as uid:gid in a private mount namespace where /etc is the tree's laid over
    this machine's and /var/lib is the tree's: the paths the units name, and the tree's users,
    without touching this machine's files."""
    mounts = (
        f"mount --make-rprivate / && mount -t overlay overlay -o lowerdir={root}/etc:/etc /etc "
        f"&& mount --bind {root}/var/lib /var/lib"
    )
    return subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f'{mounts} && exec setpriv --reuid {uid} --regid {gid} --clear-groups "$@"',
            "sh",
            *command,
        ],
        **popen,
    )


def test_broker_runs_from_the_tree_as_its_user(community, root, wheel):
    """spb-broker.service's command, as the tree's mosquitto user on the tree's files,
    accepts validator 0 with the TLS files the ledger was given."""
    if not all(map(shutil.which, ("unshare", "setpriv", "/usr/sbin/mosquitto"))):
        pytest.skip("needs unshare, setpriv and /usr/sbin/mosquitto")
    port = free_port()
    assert setup(community, root, wheel, "--broker-port", str(port)) == 0
    probe = in_tree(root, 0, 0, ["true"], stderr=subprocess.PIPE, text=True)
    _, refused = probe.communicate()  # its stderr pipe read and closed
    if probe.returncode != 0:
        pytest.skip(f"no private overlay mounts here: {refused.strip()}")
    uid, gid = (
        int(f)
        for f in next(
            r.split(":")[2:4] for r in (root / "etc/passwd").read_text().splitlines() if r.startswith("mosquitto:")
        )
    )
    command = re.search(r"^ExecStart=(.*)$", (root / "etc/systemd/system/spb-broker.service").read_text(), re.M)[1]
    broker = in_tree(root, uid, gid, command.split())
    client = BusClient(
        "127.0.0.1",
        port,
        "v0",
        tls=TlsFiles.in_dir(root / "var/lib/spb-ledger/validators/v0"),
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.2,
    )
    try:
        client.connect()
        assert client.wait_connected(10)
    finally:
        client.close()
        broker.terminate()
        assert broker.wait(10) == 0
    assert (root / "var/lib/spb-broker/mosquitto.db").stat().st_uid == uid
