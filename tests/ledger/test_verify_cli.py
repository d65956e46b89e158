"""`spb-ledger verify`: the §4 verdict on one message, as an operator sees it (stdout, exit code)."""

from __future__ import annotations

import subprocess
import sys
from hashlib import sha256

import pytest

from deploy.provision import provision
from ledger.cli import main
from tests.support.bus import REPO, child_env
from tests.support.ext import EXT, EXT_VALID, EXT_VALIDATOR
from tests.support.wire import CA, INVALID, M1, NOW, TYP, VALID, body_map, pk

CA_ARGS = ["--ca", pk(CA).hex(), "--now", str(NOW)]
DEVICE_ARGS = ["--device", pk(M1).hex()]


def args_for(name: str) -> list[str]:
    """The trust arguments a valid vector needs: the CA and clock, plus m0001's device key for the reading."""
    return CA_ARGS + (DEVICE_ARGS if TYP[name] == "reading" else [])


@pytest.fixture
def message_file(tmp_path):
    """message_file(raw): a path holding raw, as an operator would save a message."""

    def write(raw: bytes, name: str = "message.cbor") -> str:
        path = tmp_path / name
        path.write_bytes(raw)
        return str(path)

    return write


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ledger.cli.main in this process."""
    code = main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`python -m ledger.cli verify ...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", *argv],
        cwd=REPO,
        env=child_env(),
        input=stdin,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_vector_prints_ok_typ_and_hash(capsys, message_file, name):
    """Each valid vector: exactly `ok <typ> <sha256 of the bytes>`, exit 0."""
    raw = VALID[name]
    code, out, _ = run_main(capsys, message_file(raw), *args_for(name))
    assert (code, out) == (0, f"ok {TYP[name]} {sha256(raw).hexdigest()}\n")


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_prints_its_reason(capsys, message_file, vector):
    """Each invalid vector, checked as the typ its topic carries: exactly `reject <reason>`, exit 1."""
    path = message_file(bytes.fromhex(vector["hex"]))
    code, out, _ = run_main(capsys, path, *CA_ARGS, *DEVICE_ARGS, "--expect", vector["typ"])
    assert (code, out) == (1, f"reject {vector['reason']}\n")


EXT_ARGS = [*CA_ARGS, "--validator", pk(EXT_VALIDATOR).hex()]
EXT_INVALID = [v for v in EXT["invalid"] if "hex" in v]


@pytest.mark.parametrize("name", sorted(EXT_VALID))
def test_each_extension_vector_prints_ok_as_its_typ(capsys, message_file, name):
    """The market's types (and revoke, busy) need nothing new: BODY_TYPES and the Verifier
    know them; validator-signed ones verify under --validator."""
    raw = EXT_VALID[name]
    typ = body_map(raw)["typ"]
    code, out, _ = run_main(capsys, message_file(raw), *EXT_ARGS, "--expect", typ)
    assert (code, out) == (0, f"ok {typ} {sha256(raw).hexdigest()}\n")


@pytest.mark.parametrize("vector", EXT_INVALID, ids=[v["name"] for v in EXT_INVALID])
def test_each_invalid_extension_vector_prints_its_reason(capsys, message_file, vector):
    code, out, _ = run_main(capsys, message_file(bytes.fromhex(vector["hex"])), *EXT_ARGS, "--expect", vector["typ"])
    assert (code, out) == (1, f"reject {vector['reason']}\n")


def test_a_market_status_without_its_validator_key_is_signature(capsys, message_file):
    code, out, _ = run_main(capsys, message_file(EXT_VALID["cleared"]), *CA_ARGS)
    assert (code, out) == (1, "reject signature\n")


def test_expecting_another_type_rejects_as_type(capsys, message_file):
    """An ERC where a CTP is expected is `type`, though it is otherwise valid."""
    code, out, _ = run_main(capsys, message_file(VALID["erc"]), *CA_ARGS, "--expect", "ctp")
    assert (code, out) == (1, "reject type\n")


def test_reading_without_device_key_rejects_as_signature(capsys, message_file):
    """A reading cannot be checked without its meter's device key: `signature`."""
    code, out, _ = run_main(capsys, message_file(VALID["reading"]), *CA_ARGS)
    assert (code, out) == (1, "reject signature\n")


def test_untrusted_or_expired_devcert_rejects_as_cert(capsys, message_file):
    """A birth checked with no trusted CA, or after its devcert expired, is `cert`."""
    path = message_file(VALID["birth"])
    assert run_main(capsys, path, "--now", str(NOW))[:2] == (1, "reject cert\n")
    assert run_main(capsys, path, "--ca", pk(CA).hex(), "--now", str(2**63))[:2] == (1, "reject cert\n")


@pytest.mark.parametrize("bad", ["zz" * 32, pk(CA).hex()[:-2], pk(CA).hex() + "00", ""])
def test_malformed_ca_key_is_a_usage_error(capsys, message_file, bad):
    """--ca that is not 32 bytes of hex: exit 2 with the argparse message, no verdict on stdout."""
    with pytest.raises(SystemExit) as exc:
        main(["verify", message_file(VALID["birth"]), "--ca", bad])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert out == ""
    assert "is not a 32-byte key in hex" in err


# ---- as a real process -----------------------------------------------------------------


def test_process_prints_ok_for_a_valid_file(message_file):
    """The installed entry point's exact output and exit code for a valid ERC."""
    result = run_cli(message_file(VALID["erc"]), *CA_ARGS)
    assert (result.returncode, result.stdout) == (0, f"ok erc {sha256(VALID['erc']).hexdigest()}\n".encode())


def test_process_reads_the_message_from_stdin():
    """`-` reads the message from stdin (a reading, with its device key)."""
    result = run_cli("-", *CA_ARGS, *DEVICE_ARGS, stdin=VALID["reading"])
    assert (result.returncode, result.stdout) == (0, f"ok reading {sha256(VALID['reading']).hexdigest()}\n".encode())


def test_process_rejects_with_exit_1(message_file):
    """A rejection exits 1 with only `reject <reason>` on stdout."""
    vector = next(v for v in INVALID if v["reason"] == "proof")
    result = run_cli(message_file(bytes.fromhex(vector["hex"])), *CA_ARGS, "--expect", vector["typ"])
    assert (result.returncode, result.stdout) == (1, b"reject proof\n")


def test_process_missing_file_exits_2_with_one_line(tmp_path):
    """An unreadable file is not a verdict: exit 2, nothing on stdout, one line on stderr naming it."""
    missing = tmp_path / "nope.cbor"
    result = run_cli(str(missing), *CA_ARGS)
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0]


def test_community_dir_supplies_the_trust_anchors(tmp_path, capsys):
    """`--community DIR` trusts the CA from community.toml: a devcert it issued verifies, and
    without it the same devcert is `cert`."""
    now = 1_790_000_000_000
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=now)
    devcert = tmp_path / "meters" / "m0001" / "devcert.cbor"
    assert main(["verify", "--now", str(now), str(devcert)]) == 1
    assert capsys.readouterr().out == "reject cert\n"
    assert main(["verify", "--community", str(tmp_path), "--now", str(now), str(devcert)]) == 0
    assert capsys.readouterr().out.startswith("ok devcert ")
    assert main(["verify", "--community", str(tmp_path / "nowhere"), str(devcert)]) == 2
    assert "cannot read the community" in capsys.readouterr().err


@pytest.mark.parametrize("ca_line", ['pk = "x"', "pk = 1", 'pk = "00"'], ids=["not-hex", "not-text", "short"])
def test_a_malformed_community_file_is_a_one_line_error(tmp_path, capsys, ca_line):
    (tmp_path / "community.toml").write_text(f"[ca]\n{ca_line}\n")
    assert main(["verify", "--community", str(tmp_path), "-"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_endless_input_is_read_only_up_to_the_limit(tmp_path, capsys):
    """verify reads one byte over 64 KiB and rejects: `decode`, never hanging on /dev/zero."""
    assert main(["verify", "/dev/zero"]) == 1
    assert capsys.readouterr().out == "reject decode\n"
