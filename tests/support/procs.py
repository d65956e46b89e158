"""Child processes of a test (`spb-ledger run`, `spb-meter run`, ...), each writing to a log
file rather than a pipe: a pipe nobody reads fills up and stops the child mid-test, and one
left open is a ResourceWarning (an error here)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.support.bus import REPO, child_env


class Procs:
    """The child processes of one test, each logging to its own file; killed at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *module_args: object) -> subprocess.Popen:
        """`python -m MODULE_ARGS`; a restart under the same name appends to the same log."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *map(str, module_args)],
                cwd=REPO,
                env=child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        """The end of every log, for a failure message."""
        return "".join(
            f"\n----- {path.name} -----\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> None:
        """SIGTERM, and a clean exit within timeout s."""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout) == 0, self.logs()

    def kill_9(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
