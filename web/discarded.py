"""What a restore throws away, on the web: the plan on the console's confirmation page and at
`GET /admin/rollback/api/plan?snapshot_id=…`; the discarded-writes report on the history page, on its
own console page and at `GET /admin/rollback/api/discarded/<txn>`. Reads only: carrying writes forward
is the CLI's (`python -m manage.rollback carry-forward`), where the operator sees each skipped row."""

from __future__ import annotations

from flask import jsonify, request

from rollback.discarded import ReportNotFound, load_summary, require_summary
from rollback.errors import RollbackError
from rollback.ids import validate_snapshot_id, validate_txn_id
from rollback.journal import Journal
from rollback.plan import build_plan
from rollback.settings import Settings

from .api import api
from .context import web_context
from .errors import BadRequest, TxnNotFound


@api.get("/plan")
def plan():
    ref = request.args.get("snapshot_id")
    if not ref:
        raise BadRequest("snapshot_id is required (an id or 'latest')")
    return jsonify(build_plan(web_context().settings, validate_snapshot_id(ref, allow_latest=True)))


@api.get("/discarded/<txn>")
def discarded(txn: str):
    return jsonify(report_or_404(web_context().settings, txn))


def report_or_404(settings: Settings, txn: str) -> dict:
    validate_txn_id(txn)
    if not Journal(settings.backup_dir).path(txn).is_file():
        raise TxnNotFound(f"no restore transaction {txn}")
    try:
        return require_summary(settings, txn)
    except ReportNotFound as exc:
        raise TxnNotFound(str(exc)) from None


def plan_for_page(settings: Settings, snapshot_id: str) -> dict:
    """The plan for the confirmation page; a failure is shown on the page, not raised."""
    try:
        return build_plan(settings, snapshot_id)
    except (RollbackError, OSError) as exc:
        return {"error": str(exc)}


def with_reports(settings: Settings, rows: list[dict]) -> list[dict]:
    """History rows with the summary of their discarded-writes report (None when there is none)."""
    return [dict(row, discarded=load_summary(settings, row["txn"])) for row in rows]
