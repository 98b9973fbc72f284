"""Errors that the command line turns into one clear line and an exit code.

`UsageError` (exit 2) is bad input that the user can fix before any work starts; `RunError` (exit 1)
is a failure while running (a NaN loss, a plugin that raises, a corrupt file met mid-run).
"""

from __future__ import annotations


class CleanbenchError(Exception):
    """Base class: a message that names the problem and, where there is one, the fix."""

    exit_code: int = 1


class UsageError(CleanbenchError):
    """Bad input: unknown names, malformed files, out-of-range values. Exit code 2."""

    exit_code = 2


class RunError(CleanbenchError):
    """A failure while running a stage. Exit code 1."""

    exit_code = 1


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite."""

    def __init__(self, stage: str, step: int, value: float) -> None:
        super().__init__(
            f"{stage}: the loss became {value} at step {step}; lower the learning rate "
            f"(e.g. --defense-opt lr=...) or check the data"
        )
        self.stage = stage
        self.step = step


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (`signals_raise`); exit code 128 + the signal's number (130, 143).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` (a cell's failure handling)
    turns it into a failed run card. `cancelled` lists the cells that were running, `finished` how
    many had finished; the sweep fills them in."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.cancelled: list[int] = []
        self.finished = 0
        super().__init__(self.name)
