"""Typed errors of the core. Each carries a one-line message meant for an operator.

The adapters map the classes at their edges: the CLI to exit codes (manage/exit_codes.py), the web
to HTTP statuses (web/errors.py).
"""

from __future__ import annotations


class RollbackError(Exception):
    """Base class: anything the core refuses or fails to do."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(RollbackError):
    """An environment variable is missing or invalid."""


class InvalidSnapshotId(RollbackError):
    """A snapshot or transaction id does not match its pattern."""


class SnapshotNotFound(RollbackError):
    """No snapshot with that id (or none at all for 'latest') is recorded."""


class IntegrityError(RollbackError):
    """An artifact or the manifest does not match what was recorded."""


class UnsafeArchive(IntegrityError):
    """An archive member would escape the staging folder or break a limit."""


class ManifestCorrupt(IntegrityError):
    """manifest.json cannot be parsed or fails validation; it is left untouched."""


class LockHeld(RollbackError):
    """Another snapshot or restore is running."""

    def __init__(self, message: str, holder: dict | None = None):
        Exception.__init__(self, message, holder)  # args mirror the signature: Celery rebuilds from them
        self.message = message
        self.holder = holder or {}


class PreflightFailed(RollbackError):
    """A check before any destructive action failed; nothing was changed."""


class StepFailed(RollbackError):
    """A restore or snapshot step failed; `step` names it, `cause` explains."""

    def __init__(self, step: str, cause: str):
        Exception.__init__(self, step, cause)
        self.message = f"step {step} failed: {cause}"
        self.step = step
        self.cause = cause


class CommandFailed(RollbackError):
    """An external command (pg_dump, git, tar, alembic ...) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str):
        tail = " ".join(stderr.strip().splitlines()[-3:])[:500]
        Exception.__init__(self, argv, returncode, stderr)
        self.message = f"{argv[0]} exited {returncode}: {tail or 'no error output'}"
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class StepInterrupted(StepFailed):
    """A step stopped half-way and could not put things back (e.g. Postgres went away during the
    undo). The transaction stays open and owns the service, so nothing else runs on the half-done
    state; `resume` (or the worker's reconcile at start) redoes the step from its saved copy."""
