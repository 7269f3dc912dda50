"""The status shown by the progress page and the API: the journal merged with live Celery task state."""

from __future__ import annotations

import uuid

import pytest

from rollback.journal import Journal
from rollback.restore import abandon, begin_restore
from web.jobs import bind_celery
from web.progress import restore_status


@pytest.fixture
def running_txn(settings, snapshot, redis_db):
    """An admitted restore whose preflight is running under a (recorded) Celery task id."""
    doc = begin_restore(settings, "latest", "progress test", requested_by="test")
    task_ids = {step: str(uuid.uuid4()) for step in ("preflight", "db", "data", "code", "readyz")}
    journal = Journal(settings.backup_dir)
    journal.update(doc["txn"], task_ids=task_ids)
    journal.step_started(doc["txn"], "preflight")
    yield doc["txn"], task_ids
    abandon(settings, doc["txn"], "test over")


def test_running_step_shows_the_task_progress(settings, running_txn):
    txn, task_ids = running_txn
    backend = bind_celery(settings).backend
    meta = {"txn": txn, "step": "preflight", "done": 1, "total": 4, "message": "sha256 of db.dump: 25%"}
    backend.store_result(task_ids["preflight"], meta, "PROGRESS")
    status = restore_status(settings, txn)
    step = status["steps"][0]
    assert status["status"] == "running" and status["final"] is False
    assert (step["status"], step["task_state"], step["message"]) == ("running", "PROGRESS", meta["message"])
    assert status["percent"] == 5  # a quarter of the first of five steps
    assert status["steps"][1]["task_state"] == "PENDING"


def test_a_task_that_died_outside_the_journal_is_reported(settings, running_txn):
    txn, task_ids = running_txn
    backend = bind_celery(settings).backend
    backend.mark_as_failure(task_ids["preflight"], RuntimeError("worker lost its lock"))
    status = restore_status(settings, txn)
    assert status["status"] == "failed" and status["final"] is True
    assert "worker lost its lock" in status["error"]
