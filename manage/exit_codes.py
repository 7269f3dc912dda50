"""The exit status of the command-line tools for each error of the core: 0 success, 1 failed,
2 bad input, 3 another snapshot/restore holds the lock."""

from __future__ import annotations

from rollback.canary import InvalidDeployId
from rollback.errors import ConfigError, InvalidSnapshotId, LockHeld, RollbackError, SnapshotNotFound

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_LOCKED = 0, 1, 2, 3


class UsageError(RollbackError):
    """The command line asks for something that cannot be done as asked."""


# The most specific class of an error decides (its method resolution order is walked).
EXIT_CODES: dict[type[BaseException], int] = {
    RollbackError: EXIT_FAILED,
    ConfigError: EXIT_BAD_INPUT,
    InvalidSnapshotId: EXIT_BAD_INPUT,
    SnapshotNotFound: EXIT_BAD_INPUT,
    InvalidDeployId: EXIT_BAD_INPUT,
    UsageError: EXIT_BAD_INPUT,
    LockHeld: EXIT_LOCKED,
}


def exit_code_for(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILED
