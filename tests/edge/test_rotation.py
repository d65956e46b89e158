"""edge.rotation: a meter's account key rotation on disk, interrupted at every step. On the
bus: tests/system/test_grow_community.py."""

from __future__ import annotations

import stat
from contextlib import closing

import pytest

from broker.keys import load_key
from deploy.provision import provision
from edge import rotation
from edge.cli import lock_state_dir, main
from edge.store import MeterStore
from wire import topics
from wire.messages import Rotate, open_message

NOW = 1_750_000_000_000


@pytest.fixture
def meter(tmp_path):
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NOW)
    return tmp_path / "meters" / "m0001"


def pk(key) -> bytes:
    return bytes(key.verify_key)


def test_a_rotation_is_signed_by_the_old_key_and_resent_unchanged_until_done(meter):
    old = load_key(meter / "account.key")
    change = rotation.prepare(meter, NOW)
    body = open_message(change.expect.message, Rotate).body
    assert (body.account, body.new, body.by, body.t) == (pk(old), change.new_pk, pk(old), NOW)
    assert change.expect.topic == topics.TX_ROTATE
    assert (change.expect.moves, change.expect.emptied, change.expect.appears) == (pk(old), True, change.new_pk)
    assert change.expect.duplicate_is_applied  # a copy of an applied rotation is `duplicate`
    assert stat.S_IMODE((meter / rotation.NEW_KEY).stat().st_mode) == 0o600
    again = rotation.prepare(meter, NOW + 1000)  # interrupted: the same key, the same bytes
    assert again.expect.message == change.expect.message and again.new_pk == change.new_pk
    assert load_key(meter / "account.key").encode() == old.encode()  # nothing switched yet


def test_applied_switches_the_key_and_keeps_the_old_one(meter):
    old = load_key(meter / "account.key")
    change = rotation.prepare(meter, NOW)
    kept = rotation.switch(meter, change)
    assert pk(load_key(meter / "account.key")) == change.new_pk
    assert pk(load_key(kept)) == pk(old) and kept.name == f"account.key.{pk(old).hex()[:16]}.old"
    with closing(MeterStore(meter / "meter.db")) as store:
        assert store.account_keys() == [pk(old)], "its trades of before name it: the meter keeps them as its own"
    assert not (meter / rotation.NEW_KEY).exists() and not (meter / rotation.MESSAGE).exists()
    assert rotation.finished(meter) is None


def test_a_crash_after_the_switch_is_finished_by_the_next_run(meter):
    change = rotation.prepare(meter, NOW)
    message = (meter / rotation.MESSAGE).read_bytes()
    rotation.switch(meter, change)
    (meter / rotation.MESSAGE).write_bytes(message)  # as if the process died before removing it
    assert rotation.finished(meter) == change.new_pk
    assert not (meter / rotation.MESSAGE).exists()


def test_rejected_forgets_the_new_key(meter):
    old = load_key(meter / "account.key")
    first = rotation.prepare(meter, NOW)
    rotation.abandon(meter)
    assert pk(load_key(meter / "account.key")) == pk(old)
    assert rotation.prepare(meter, NOW).new_pk != first.new_pk  # afresh


def test_rotate_key_refuses_while_the_meter_runs(meter, capsys):
    with lock_state_dir(meter):
        assert main(["rotate-key", str(meter), "--broker", "127.0.0.1:1"]) == 1
    assert "stop it first" in capsys.readouterr().err
    assert not (meter / rotation.NEW_KEY).exists()


def test_a_rotation_without_an_outcome_is_pending_until_a_run_ends_it(meter):
    assert not rotation.pending(meter)
    change = rotation.prepare(meter, NOW)
    assert rotation.pending(meter), "sent, no answer: the ledger may have applied it"
    rotation.switch(meter, change)
    assert not rotation.pending(meter)
    rotation.prepare(meter, NOW + 1)
    rotation.abandon(meter)
    assert not rotation.pending(meter)
