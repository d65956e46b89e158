"""`spb-meter run` refuses bad arguments and a state dir that is not one, with one line."""

from __future__ import annotations

import pytest

from edge.cli import main


@pytest.mark.parametrize("extra", [["--reading-s", "0"], ["--reading-s", "-1"], ["--reading-s", "nan"],
                                   ["--fake-w", "1.5"], ["--fake-w", "2000000"], ["--broker", "nohost"]])
def test_bad_arguments_exit_2(tmp_path, extra):
    args = ["run", "--state-dir", str(tmp_path), "--broker", "127.0.0.1:1883", "--fake-w", "100", *extra]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2


def test_a_dir_that_is_no_meter_state_dir_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["run", "--state-dir", str(tmp_path / "missing"), "--broker", "127.0.0.1:1883",
                 "--fake-w", "100"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spb-meter: ") and err.count("\n") == 1
