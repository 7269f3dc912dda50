"""The HTTP status of every error the web answers with, in one table, and the web's own errors."""

from __future__ import annotations

from rollback.canary import InvalidDeployId
from rollback.errors import (ConfigError, IntegrityError, InvalidSnapshotId, LockHeld, PreflightFailed, RollbackError,
                             SnapshotNotFound, StepFailed)


class BadRequest(RollbackError):
    """The request's body or path is malformed."""


class TxnNotFound(RollbackError):
    """No journal for the requested restore transaction."""


class BrokerUnavailable(RollbackError):
    """Redis (the broker) refused the work; nothing was started."""


# The most specific class of an error decides (its method resolution order is walked).
HTTP_STATUSES: dict[type[BaseException], int] = {
    RollbackError: 500,
    ConfigError: 500,
    StepFailed: 500,
    InvalidSnapshotId: 400,
    InvalidDeployId: 400,
    BadRequest: 400,
    SnapshotNotFound: 404,
    TxnNotFound: 404,
    LockHeld: 409,
    IntegrityError: 422,
    PreflightFailed: 422,
    BrokerUnavailable: 503,
}


def http_status_for(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUSES:
            return HTTP_STATUSES[cls]
    return 500
