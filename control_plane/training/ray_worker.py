"""The part of a training job that runs on a Ray node: one actor per job, owning its process.

The actor starts exactly the command a local worker would start (same argv, working directory,
environment and ``job.log``), as the leader of a new process group, and reports its end the way
the local runner does: exit code, peak memory and CPU time from ``os.wait4``. Stopping it sends
SIGTERM to the whole group, waits a grace period, then SIGKILLs the group, so helpers a script
started go too.

This module imports only the standard library: it is shipped to the Ray workers by value
(``cloudpickle.register_pickle_by_value``), so a Ray node needs no copy of the control plane to
host the actor; it needs what the job's command itself needs (the same interpreter path, the
training folder and the dataset at the same paths).

Its methods never block for long: the control plane polls, so one actor call is answered at once.

If the actor's own process dies outright (its node is lost, or it is killed), nothing in it runs
any more; the job's leader is then ended by the kernel (``PR_SET_PDEATHSIG``), but helpers the
job started itself may outlive it on that node, as with any supervisor that is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from subprocess import Popen

# (exit code, peak resident memory in bytes or None, CPU seconds or None)
Outcome = tuple[int, int | None, float | None]

_PR_SET_PDEATHSIG = 1


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A function for the child (between fork and exec) that asks the kernel to SIGKILL it when
    the actor's process dies; None where ``prctl`` does not exist. Resolved before forking, so
    the child imports nothing and takes no lock."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigkill = int(signal.SIGKILL)

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)

    return set_pdeathsig


class JobProcess:
    """One job's process group on the node hosting this actor."""

    def __init__(self) -> None:
        self.proc: Popen[bytes] | None = None
        self.outcome: Outcome | None = None
        self._set_pdeathsig = _pdeathsig_setter()

    def start(self, argv: list[str], cwd: str, env: dict[str, str], log_path: str) -> int:
        """Start the command (once; a repeated call returns the same pid) and return its pid."""
        if self.proc is not None:
            return self.proc.pid
        with open(log_path, "ab") as log_file, open(os.devnull, "rb") as devnull:
            self.proc = Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=devnull,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=self._set_pdeathsig,
            )
        return self.proc.pid

    def poll(self) -> Outcome | None:
        """The outcome once the process has ended (its group is killed then), else None."""
        return self._wait(block=False)

    def stop(self, grace_s: float) -> Outcome:
        """End the whole process group (TERM, grace, KILL) and return the outcome."""
        if self.proc is None:
            return (-int(signal.SIGKILL), None, None)
        self._kill(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        outcome = self._wait(block=False)
        while outcome is None and time.monotonic() < deadline:
            time.sleep(0.05)
            outcome = self._wait(block=False)
        self._kill(signal.SIGKILL)
        if outcome is None:
            outcome = self._wait(block=True)
        assert outcome is not None
        return outcome

    def _kill(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def _wait(self, block: bool) -> Outcome | None:
        if self.outcome is not None or self.proc is None:
            return self.outcome
        try:
            pid, status, usage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.outcome = (-1, None, None)
            return self.outcome
        if pid == 0:
            return None
        # The leader is gone; helpers it left in its group go with it.
        self._kill(signal.SIGKILL)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.outcome = (
            self.proc.returncode,
            int(usage.ru_maxrss) * 1024,
            float(usage.ru_utime + usage.ru_stime),
        )
        return self.outcome
