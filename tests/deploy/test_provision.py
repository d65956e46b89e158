"""spb-deploy provision: layout, modes, devcerts, community.toml, idempotent growth, crash recovery, CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from broker import secure
from broker.client import TlsFiles
from broker.keys import load_key, public_hex, write_new_key
from deploy import cli
from deploy.cli import main
from deploy.provision import CLOCK_SKEW_MS, DAY_MS, ProvisionError, provision
from wire.messages import DevCert
from wire.reasons import Reject
from wire.verify import Verifier

NOW = 1_750_000_000_000
REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _secrets(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every key and devcert: the bytes a re-run must never change."""
    return {name: data for name, data in files.items() if name.endswith((".key", ".cbor"))}


def _pk(path: Path) -> str:
    return public_hex(load_key(path))


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_layout_and_modes(tmp_path):
    provision(tmp_path, meters=2, accounts=None, validators=2, now_ms=NOW, valid_days=10)
    tls = ("mqtt.crt", "mqtt.key", "ca.crt")  # the bus's client certificate (deploy.bus)
    assert sorted(_files(tmp_path)) == sorted(
        [
            "ca/ca.key",
            "ca/mqtt-ca.key",
            "community.toml",
            *(
                f"meters/{m}/{f}"
                for m in ("m0001", "m0002")
                for f in ("device.key", "devcert.cbor", "account.key", "meter.toml", *tls)
            ),
            *(f"validators/{v}/{f}" for v in ("v0", "v1") for f in ("validator.key", *tls)),
            *(f"{who}/{f}" for who in ("monitoring/monitor", "operator", "mirror") for f in tls),
            "operator/operator.key",  # signs register, fund, payout, retire (ledger.operator)
            *(
                f"broker/{f}"
                for f in (
                    "ca.crt",
                    "server.crt",
                    "server.key",
                    "crl.pem",
                    "acl",
                    "acl-local",
                    "broker.toml",
                    "mosquitto.conf",
                )
            ),
        ]
    )
    for name in _files(tmp_path):
        assert _mode(tmp_path / name) == (0o600 if name.endswith(".key") else 0o644), name
    for d in (
        "ca",
        "meters",
        "meters/m0001",
        "meters/m0002",
        "validators",
        "validators/v0",
        "validators/v1",
        "monitoring",
        "monitoring/monitor",
        "operator",
        "mirror",
        "broker",
    ):
        assert _mode(tmp_path / d) == 0o700, d


def test_loosened_secret_dir_is_tightened(tmp_path):
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    (tmp_path / "meters" / "m0001").chmod(0o755)
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert _mode(tmp_path / "meters" / "m0001") == 0o700


def test_devcerts_verify_and_name_their_meter(tmp_path):
    community = provision(tmp_path, meters=3, accounts=None, validators=1, now_ms=NOW, valid_days=30)
    ca_pk = bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)
    verifier = Verifier(cas=[ca_pk])
    for meter in community.meters:
        home = tmp_path / "meters" / meter.id
        raw = (home / "devcert.cbor").read_bytes()
        cert = verifier.certificate(raw, NOW)
        assert cert.meter == meter.id
        assert cert.pk == bytes(load_key(home / "device.key").verify_key)
        assert (cert.nbf, cert.exp) == (NOW - CLOCK_SKEW_MS, NOW + 30 * DAY_MS)
        with pytest.raises(Reject):
            verifier.certificate(raw, NOW + 30 * DAY_MS + 1)


def test_new_devcert_is_valid_for_a_peer_whose_clock_lags_by_the_allowance(tmp_path):
    """A peer up to CLOCK_SKEW_MS behind the provisioning machine accepts the new meter's birth."""
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=30)
    verifier = Verifier(cas=[bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)])
    raw = (tmp_path / "meters/m0001/devcert.cbor").read_bytes()
    assert verifier.certificate(raw, NOW - CLOCK_SKEW_MS).meter == "m0001"
    with pytest.raises(Reject):
        verifier.certificate(raw, NOW - CLOCK_SKEW_MS - 1)


def test_community_toml_matches_keys_on_disk(tmp_path):
    community = provision(tmp_path, meters=2, accounts=3, validators=2, now_ms=NOW, valid_days=10)
    doc = _toml(community.toml_path)
    assert community.toml_path.read_text().startswith("#")
    assert doc["ca"]["pk"] == _pk(tmp_path / "ca" / "ca.key")
    assert [m["id"] for m in doc["meters"]] == ["m0001", "m0002"]
    for m in doc["meters"]:
        home = tmp_path / "meters" / m["id"]
        assert m["device_pk"] == _pk(home / "device.key")
        assert m["account_pk"] == _pk(home / "account.key")
        assert (m["devcert_nbf"], m["devcert_exp"]) == (NOW - CLOCK_SKEW_MS, NOW + 10 * DAY_MS)
        assert _toml(home / "meter.toml") == {
            "id": m["id"],
            "ca_pk": doc["ca"]["pk"],
            "device_pk": m["device_pk"],
            "account_pk": m["account_pk"],
            "validators": [v["pk"] for v in doc["validators"]],
            "market": {"interval_s": 300, "reveal_s": 60, "grace": 1},  # the defaults (test_provision_market.py)
        }
    assert doc["accounts"] == [
        {"id": "a0001", "pk": _pk(tmp_path / "meters/m0001/account.key"), "meter": "m0001"},
        {"id": "a0002", "pk": _pk(tmp_path / "meters/m0002/account.key"), "meter": "m0002"},
        {"id": "a0003", "pk": _pk(tmp_path / "accounts/a0003/account.key")},
    ]
    assert doc["validators"] == [{"index": i, "pk": _pk(tmp_path / f"validators/v{i}/validator.key")} for i in range(2)]


def test_rerun_changes_no_key_or_devcert_byte(tmp_path):
    provision(tmp_path, meters=2, accounts=3, validators=2, now_ms=NOW, valid_days=10)
    before = _files(tmp_path)
    provision(tmp_path, meters=2, accounts=3, validators=2, now_ms=NOW, valid_days=10)
    assert _files(tmp_path) == before
    provision(tmp_path, meters=2, accounts=3, validators=2, now_ms=NOW + DAY_MS, valid_days=99)
    assert _secrets(_files(tmp_path)) == _secrets(before)


def test_the_mirror_identity_is_made_once_and_kept(tmp_path):
    """Issue 16: DIR/mirror holds the JSON mirror's client certificate (CN mirror), which the ACL
    lets write only spb-json/# and homeassistant/#; a re-run keeps its key and certificate."""
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    home = secure.mirror_dir(tmp_path)
    assert TlsFiles.in_dir(home) == TlsFiles(home / "ca.crt", home / "mqtt.crt", home / "mqtt.key")
    cert = x509.load_pem_x509_certificate((home / "mqtt.crt").read_bytes())
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["mirror"]
    assert (home / "ca.crt").read_bytes() == (tmp_path / "broker/ca.crt").read_bytes()
    assert "\nuser mirror\ntopic read spb/v1/#\ntopic write spb-json/#\n" in (tmp_path / "broker/acl").read_text()
    before = {name: data for name, data in _files(tmp_path).items() if name.startswith("mirror/")}
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW + DAY_MS, valid_days=10, monitors=("ha",))
    assert {name: data for name, data in _files(tmp_path).items() if name.startswith("mirror/")} == before
    assert not (tmp_path / "monitoring/mirror").exists()


def test_no_monitoring_user_may_take_the_mirror_s_name(tmp_path):
    with pytest.raises(ValueError, match="monitoring user 'mirror'"):
        provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, monitors=("mirror",))


def test_growing_keeps_earlier_meters(tmp_path):
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    before = _secrets(_files(tmp_path))
    community = provision(tmp_path, meters=3, accounts=None, validators=1, now_ms=NOW + 5, valid_days=10)
    after = _secrets(_files(tmp_path))
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {
        "meters/m0003/device.key",
        "meters/m0003/account.key",
        "meters/m0003/devcert.cbor",
        "meters/m0003/mqtt.key",
    }
    nbf = NOW - CLOCK_SKEW_MS
    assert [(m.id, m.devcert_nbf) for m in community.meters] == [("m0001", nbf), ("m0002", nbf), ("m0003", nbf + 5)]


def test_smaller_counts_remove_nothing(tmp_path):
    provision(tmp_path, meters=3, accounts=None, validators=2, now_ms=NOW, valid_days=10)
    community = provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert (len(community.meters), len(community.accounts), len(community.validators)) == (3, 3, 2)


def test_more_accounts_than_meters(tmp_path):
    community = provision(tmp_path, meters=1, accounts=3, validators=1, now_ms=NOW, valid_days=10)
    assert [(a.id, a.meter) for a in community.accounts] == [("a0001", "m0001"), ("a0002", None), ("a0003", None)]
    assert sorted(p.name for p in (tmp_path / "accounts").iterdir()) == ["a0002", "a0003"]
    assert _mode(tmp_path / "accounts" / "a0002") == 0o700
    assert _mode(tmp_path / "accounts" / "a0002" / "account.key") == 0o600


def test_fewer_accounts_than_meters(tmp_path):
    community = provision(tmp_path, meters=3, accounts=1, validators=1, now_ms=NOW, valid_days=10)
    assert [m.account_pk is not None for m in community.meters] == [True, False, False]
    assert not (tmp_path / "meters/m0002/account.key").exists()
    assert not (tmp_path / "accounts").exists()
    doc = _toml(community.toml_path)
    assert "account_pk" not in doc["meters"][1]
    assert doc["accounts"] == [{"id": "a0001", "pk": community.meters[0].account_pk, "meter": "m0001"}]


def test_new_meter_adopts_its_earlier_account(tmp_path):
    provision(tmp_path, meters=1, accounts=2, validators=1, now_ms=NOW, valid_days=10)
    seed = (tmp_path / "accounts/a0002/account.key").read_bytes()
    community = provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert (tmp_path / "meters/m0002/account.key").read_bytes() == seed
    assert not (tmp_path / "accounts/a0002").exists()
    assert [(a.id, a.meter) for a in community.accounts] == [("a0001", "m0001"), ("a0002", "m0002")]


def test_devcert_reissued_for_a_bad_file(tmp_path):
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    (tmp_path / "meters/m0002/devcert.cbor").write_bytes(b"garbage")
    kept = (tmp_path / "meters/m0001/devcert.cbor").read_bytes()
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW + 1, valid_days=10)
    assert (tmp_path / "meters/m0001/devcert.cbor").read_bytes() == kept
    ca_pk = bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)
    cert = Verifier([ca_pk]).certificate((tmp_path / "meters/m0002/devcert.cbor").read_bytes(), NOW + 1)
    assert cert.nbf == NOW + 1 - CLOCK_SKEW_MS


def test_missing_ca_key_is_refused_while_devcerts_exist(tmp_path):
    """Flashed meters keep the old CA: a silent new one would split the community."""
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    (tmp_path / "ca" / "ca.key").unlink()
    before = _files(tmp_path)
    with pytest.raises(ProvisionError, match=r"ca\.key is missing.*--new-ca"):
        provision(tmp_path, meters=3, accounts=None, validators=1, now_ms=NOW + 1, valid_days=10)
    assert _files(tmp_path) == before


def test_new_ca_reissues_every_devcert(tmp_path):
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    ca_pk = bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)
    device_keys = {p: p.read_bytes() for p in tmp_path.glob("meters/*/device.key")}
    (tmp_path / "ca" / "ca.key").unlink()
    community = provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW + 2, valid_days=10, new_ca=True)
    new_ca = bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)
    assert new_ca != ca_pk and community.ca_pk == new_ca.hex()
    for meter in community.meters:
        cert = Verifier([new_ca]).certificate((tmp_path / "meters" / meter.id / "devcert.cbor").read_bytes(), NOW + 2)
        assert cert.nbf == meter.devcert_nbf == NOW + 2 - CLOCK_SKEW_MS
        assert _toml(tmp_path / "meters" / meter.id / "meter.toml")["ca_pk"] == new_ca.hex()
    assert {p: p.read_bytes() for p in tmp_path.glob("meters/*/device.key")} == device_keys


def test_new_ca_flag_keeps_an_existing_ca(tmp_path):
    """--new-ca only permits replacing a missing CA key; keys are never overwritten."""
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    before = _files(tmp_path)
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10, new_ca=True)
    assert _files(tmp_path) == before


def test_expired_devcert_is_reissued(tmp_path):
    """Kept up to and including its exp, so re-runs stay byte-identical; renewed after."""
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    cert_path = tmp_path / "meters/m0001/devcert.cbor"
    kept = cert_path.read_bytes()
    exp = NOW + 10 * DAY_MS
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=exp, valid_days=10)
    assert cert_path.read_bytes() == kept
    community = provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=exp + 1, valid_days=10)
    ca_pk = bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)
    cert = Verifier([ca_pk]).certificate(cert_path.read_bytes(), exp + 1)
    assert (cert.nbf, cert.exp) == (exp + 1 - CLOCK_SKEW_MS, exp + 1 + 10 * DAY_MS)
    assert community.meters[0].devcert_exp == cert.exp


def test_interrupted_adoption_is_finished(tmp_path):
    """A crash between adoption's link and unlink leaves one key under both names."""
    provision(tmp_path, meters=1, accounts=2, validators=1, now_ms=NOW, valid_days=10)
    loose = tmp_path / "accounts/a0002/account.key"
    seed = loose.read_bytes()
    (tmp_path / "meters/m0002").mkdir(mode=0o700)
    os.link(loose, tmp_path / "meters/m0002/account.key")
    community = provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert (tmp_path / "meters/m0002/account.key").read_bytes() == seed
    assert not (tmp_path / "accounts/a0002").exists()
    assert [(a.id, a.meter) for a in community.accounts] == [("a0001", "m0001"), ("a0002", "m0002")]


def test_two_different_keys_for_one_account_are_refused(tmp_path):
    provision(tmp_path, meters=1, accounts=2, validators=1, now_ms=NOW, valid_days=10)
    other = tmp_path / "meters/m0002/account.key"
    write_new_key(other)
    before = _files(tmp_path)
    with pytest.raises(ProvisionError, match="both hold account a0002"):
        provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert {k: v for k, v in _files(tmp_path).items() if k in before} == before


def test_adoption_leaves_a_loose_dir_holding_other_files(tmp_path):
    provision(tmp_path, meters=1, accounts=2, validators=1, now_ms=NOW, valid_days=10)
    seed = (tmp_path / "accounts/a0002/account.key").read_bytes()
    (tmp_path / "accounts/a0002/notes.txt").write_text("flat 2\n")
    provision(tmp_path, meters=2, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert (tmp_path / "meters/m0002/account.key").read_bytes() == seed
    assert sorted(p.name for p in (tmp_path / "accounts/a0002").iterdir()) == ["notes.txt"]


def test_devcert_not_signed_by_the_ca_is_reissued(tmp_path):
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    ca_pk = bytes(load_key(tmp_path / "ca" / "ca.key").verify_key)
    device = load_key(tmp_path / "meters/m0001/device.key")
    forged = DevCert(meter="m0001", pk=bytes(device.verify_key), iss=ca_pk, nbf=NOW, exp=NOW + DAY_MS).sign(device)
    (tmp_path / "meters/m0001/devcert.cbor").write_bytes(forged)
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW + 1, valid_days=10)
    raw = (tmp_path / "meters/m0001/devcert.cbor").read_bytes()
    assert raw != forged and Verifier([ca_pk]).certificate(raw, NOW + 1).nbf == NOW + 1 - CLOCK_SKEW_MS


def test_invalid_counts_raise_before_touching_disk(tmp_path):
    with pytest.raises(ValueError, match="meters"):
        provision(tmp_path / "c", meters=0, accounts=None, validators=1, now_ms=NOW, valid_days=10)
    assert not (tmp_path / "c").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_provisions_a_community(tmp_path):
    result = _cli("provision", str(tmp_path / "c"), "--meters", "2", "--accounts", "3", "--validators", "2")
    assert result.returncode == 0, result.stderr
    doc = _toml(tmp_path / "c" / "community.toml")
    assert (len(doc["meters"]), len(doc["accounts"]), len(doc["validators"])) == (2, 3, 2)
    assert (tmp_path / "c/meters/m0002/devcert.cbor").is_file()
    assert str(tmp_path / "c" / "community.toml") in result.stdout
    assert "meters     2" in result.stdout and "accounts   3" in result.stdout


def test_cli_rejects_bad_args_with_exit_2(tmp_path):
    result = _cli("provision", str(tmp_path / "c"), "--meters", "0")
    assert result.returncode == 2
    assert "--meters: 0 is not in 1..9999" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--meters", "10000"],
        ["--meters", "two"],
        [],
        ["--meters", "1", "--validators", "0"],
        ["--meters", "1", "--accounts", "-1"],
        ["--meters", "1", "--valid-days", "0"],
    ],
)
def test_bad_args_exit_2(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(["provision", str(tmp_path / "c"), *args])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def _one_error_line(capsys) -> str:
    """The CLI's stderr, checked to be the single `spb-deploy: ` line operators get instead of a traceback."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spb-deploy: "), captured.err
    return lines[0]


def test_cli_refuses_a_regular_file_as_dir(tmp_path, capsys):
    target = tmp_path / "c"
    target.write_text("not a dir\n")
    assert main(["provision", str(target), "--meters", "1"]) == 1
    assert _one_error_line(capsys) == f"spb-deploy: {target}: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any dir")
def test_cli_reports_an_unwritable_dir(tmp_path, capsys):
    target = tmp_path / "c"
    target.mkdir(mode=0o500)
    assert main(["provision", str(target), "--meters", "1"]) == 1
    assert "Permission denied" in _one_error_line(capsys)


def test_cli_reports_oserrors_in_one_line(tmp_path, capsys, monkeypatch):
    """Any OSError, e.g. EACCES (which root, running the suite, never gets from a real dir)."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "c"))

    monkeypatch.setattr(cli, "provision", denied)
    assert main(["provision", str(tmp_path / "c"), "--meters", "1"]) == 1
    assert _one_error_line(capsys) == f"spb-deploy: {tmp_path / 'c'}: Permission denied"


def test_cli_reports_a_malformed_key_file(tmp_path, capsys):
    """E.g. the empty key a crash left behind before keys were written via a temp file."""
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.key").write_text("")
    assert main(["provision", str(tmp_path), "--meters", "1"]) == 1
    assert str(tmp_path / "ca" / "ca.key") in _one_error_line(capsys)
    assert (tmp_path / "ca" / "ca.key").read_text() == ""


def test_cli_missing_ca_needs_new_ca(tmp_path, capsys):
    assert main(["provision", str(tmp_path), "--meters", "1"]) == 0
    (tmp_path / "ca" / "ca.key").unlink()
    capsys.readouterr()
    assert main(["provision", str(tmp_path), "--meters", "1"]) == 1
    assert "--new-ca" in _one_error_line(capsys)
    assert main(["provision", str(tmp_path), "--meters", "1", "--new-ca"]) == 0
    assert (tmp_path / "ca" / "ca.key").is_file()


def test_cli_lets_programming_errors_raise(tmp_path, monkeypatch):
    """Only the expected errors become one line; a bug keeps its traceback."""

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(cli, "provision", broken)
    with pytest.raises(KeyError):
        main(["provision", str(tmp_path / "c"), "--meters", "1"])
