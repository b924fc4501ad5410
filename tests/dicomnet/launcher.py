"""Start ``covidscreen`` commands as new processes forked from one that has imported the CLI already.

A new interpreter spends about 7 CPU seconds importing torch, torchvision (and through it ``torch._dynamo``),
matplotlib, pydicom and the covidscreen modules before the DICOM node answers a C-ECHO; the exactly-once tests start
two nodes for each of their ten cases. Here a multiprocessing fork server imports those modules once
(``set_forkserver_preload``), and every node is a new process forked from it that runs ``covidscreen.cli.main()`` with
its own arguments, environment, standard output and error (a log file) and SIGINT handler: the code path of
``python -m covidscreen``, killed by its own fault hook (SIGKILL) and started again as a real process with nothing
but the disk in common with the one before. ``dicomnet/test_cli.py`` still starts the node as a user does
(``python -m covidscreen dicom-node``).

The fork server is a fresh interpreter started for it (not a fork of the test process, whose threads would be
unsafe to fork); it serves one test process and ends with it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from pathlib import Path

#: what the node imports before it answers (its CLI module imports the rest)
PRELOAD = ["covidscreen.cli", "covidscreen.dicomnet.node", "covidscreen.dicomnet.scoring"]

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(PRELOAD)


def _main(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The child: this environment, output to the log, SIGINT raising KeyboardInterrupt, then the CLI."""
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter has it (the server ignores it)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = ["covidscreen", *argv]
    from covidscreen.cli import main  # imported by the server already: a dictionary lookup here

    main()


class ForkedCommand:
    """A running command, with the part of :class:`subprocess.Popen`'s interface the tests use."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = str(log_path)
        self._process = _CTX.Process(target=_main, args=(list(argv), dict(env), self.log_path), daemon=False)
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        """None while it runs, else its exit status (negative: the signal that ended it, as Popen)."""
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise TimeoutError(f"command {self.pid} still running after {timeout} s")
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)


def start(argv: list[str], env: dict[str, str], log_path: Path) -> ForkedCommand:
    """``covidscreen ARGV...`` in a new process forked from the preloaded server, output appended to ``log_path``."""
    return ForkedCommand(argv, env, log_path)
