"""The exceptions siamese_k3 raises on purpose, and what the CLI does with each.

Plain Python, no keras. Every message is one sentence or two that says what was
wrong (the argument, the file) and what to do.

- `SiameseK3Error` (a `ValueError`): bad input a user can fix, an argument, an
  option, a dataset or image file. It is what the library raises for bad input;
  `TypeError` only for an argument of the wrong Python type, as Python does.
  Messages name the parameter as ``name=value`` (``loss='quadruplet'``); the CLI
  spells each one as its flag (``--loss 'quadruplet'``, `siamese_k3.cli.as_flags`).
  An unknown name has one message, `siamese_k3.checks.check_choice`'s.
- `DatasetNotFoundError` and `DatasetFormatError` (`SiameseK3Error`s): no place
  holds the dataset; a dataset file is corrupt, truncated or of the wrong kind.
- `UsageError` (a `SiameseK3Error`): the command line or its environment names
  nothing valid (``KERAS_BACKEND=nonsense``): the CLI exits 2, as argparse does.
- `RunFolderError` (a `SiameseK3Error`): a run folder that cannot be used as
  asked: not a run, finished (without overwrite), in use by another process,
  unfinished with other options, or holding a damaged or missing file.
- `RunFailedError` (a `RuntimeError`): the run started and could not finish.
  `NonFiniteLossError` (training diverged: the run is marked ``failed``) and
  `PeerTimeoutError` (a data-parallel peer never answered: left ``unfinished``)
  are its kinds; the same command resumes from the last finished epoch.
- `RunInterrupted` (a `KeyboardInterrupt`): SIGINT or SIGTERM stopped the run;
  the folder is left unfinished and the same command resumes it.

The CLI prints each as one line, ``siamese-k3: error: ...``, and exits with
`exit_code`: 2 when the command line does not parse (argparse), 1 when the
command was understood but could not run or failed, 128 + the signal number
when interrupted (130 for Ctrl-C, 143 for SIGTERM).
"""

import signal


class SiameseK3Error(ValueError):
    """Bad input a user can fix (a wrong argument, a missing or unreadable file); the message says how."""


class DatasetNotFoundError(SiameseK3Error):
    """No place holds the dataset; the message lists where we looked and how to provide it."""


class DatasetFormatError(SiameseK3Error):
    """A dataset file is corrupt, truncated or of the wrong kind; the message names it."""


class UsageError(SiameseK3Error):
    """The command line or its environment names nothing valid (a backend, say): exit 2, as for a bad command line."""


class RunFolderError(SiameseK3Error):
    """A run folder that cannot be used as asked; the message names the folder or file and the choices."""


class RunFailedError(RuntimeError):
    """A run that started and could not finish; the same command resumes it from its last finished epoch."""


class NonFiniteLossError(RunFailedError, ArithmeticError):
    """Training produced a NaN or inf loss; the message gives the epoch, the step and likely causes."""


class PeerTimeoutError(RunFailedError, TimeoutError):
    """Data-parallel processes did not all arrive within the timeout (``DataParallel(timeout_seconds=...)``,
    the CLI's --collective-timeout)."""


class RunInterrupted(KeyboardInterrupt):
    """Training was stopped by a signal (`siamese_k3.runs.interrupts.stop_on_signals`).

    A `KeyboardInterrupt`, so ``except KeyboardInterrupt`` treats it as Ctrl-C.

    Attributes:
        signal: the signal number (`signal.SIGINT`, `signal.SIGTERM`, ...).
        name: its name, e.g. ``"SIGTERM"``.
        exit_code: what a command line exits with: 128 + the signal number (130, 143).
    """

    def __init__(self, signum=signal.SIGINT):
        self.signal = int(signum)
        self.name = signal_name(signum)
        self.exit_code = 128 + self.signal
        super().__init__(f"stopped by {self.name}")

    def __reduce__(self):
        return type(self), (self.signal,)


def signal_name(signum):
    """``"SIGINT"`` for `signal.SIGINT`; ``"signal 42"`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {int(signum)}"


def exit_code(error):
    """The CLI's exit status for `error`: 128 + signal when interrupted, 1 otherwise (argparse exits 2 itself)."""
    if isinstance(error, RunInterrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(error, UsageError):
        return 2
    return 1
