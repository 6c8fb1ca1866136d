"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class SiameseK3Error(Exception):
    """Bad input a user can fix (a missing file, a wrong argument); the message says how."""


class NonFiniteLossError(SiameseK3Error, ArithmeticError):
    """Training produced a NaN or inf loss; the message gives the epoch, the step and likely causes."""
