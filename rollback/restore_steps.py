"""The five steps of a restore, in order: what each one is given and which resource it moves.

`preflight` verifies everything before anything changes; `db`, `data` and `code` each bring one
resource back; `readyz` restarts the app and waits until it is ready. The transaction around them
(journal, lock, skip/resume) is `restore.py`'s.
"""

from __future__ import annotations

import shutil
from typing import Callable

from . import migrations_info
from .errors import PreflightFailed
from .settings import Settings
from .steps import code as code_step, data as data_step, db as db_step, readyz as readyz_step
from .steps.context import StepContext
from .verify import verify_artifacts


def preflight(ctx: StepContext) -> str:
    """Every check that can fail before anything is changed."""
    settings, snap = ctx.settings, ctx.snapshot
    cold, standby_note = _choose_standby(ctx)
    checks = verify_artifacts(settings, snap, progress=lambda d, t, m: ctx.progress(d, t * 2, m), scan_data=cold)
    wanted = snap.get("alembic_revision")
    if not migrations_info.is_known_revision(settings, wanted):
        raise PreflightFailed(f"the snapshot's Alembic revision {wanted} is unknown to the deployed code "
                              f"({settings.alembic_config}); refusing to restore a schema it cannot manage")
    if snap.get("app_revision"):
        code_step.strategy_for(settings).check_available(snap["app_revision"])
    if cold:
        _check_room(settings, snap)  # the standby tree is already on disk: nothing more to stage
    ctx.progress(1, 1, "preflight passed")
    return "; ".join(checks + ["alembic revision known", "code revision available", "disk space ok", standby_note])


def _choose_standby(ctx: StepContext) -> tuple[bool, str]:
    """Record in the journal whether the warm standby of this snapshot can be used;
    return (cold path, a line for the preflight detail)."""
    from . import standby

    record, why = standby.usable_standby(ctx.settings, ctx.snapshot)
    ctx.mark("standby", record)
    if record:
        return False, f"warm standby of {record['snapshot_id']} will be used"
    return True, f"cold restore ({why})"


def _check_room(settings: Settings, snap: dict) -> None:
    data_dir = settings.data_base_dir
    probe = data_dir if data_dir.exists() else data_dir.parent
    if not probe.exists():
        raise PreflightFailed(f"DATA_BASE_DIR {data_dir} and its parent do not exist")
    needed = snap["artifacts"]["data"].get("tar_bytes") or snap["artifacts"]["data"]["size"]
    free = shutil.disk_usage(probe).free
    # Staging holds a full copy beside the live tree until the swap; keep 10 % headroom.
    if free < needed * 1.1 + (16 << 20):
        raise PreflightFailed(f"not enough room on {probe}: {free >> 20} MiB free, "
                              f"{int(needed * 1.1) >> 20} MiB needed to stage the data directory")


STEP_FUNCTIONS: dict[str, Callable[[StepContext], str]] = {
    "preflight": preflight,
    "db": db_step.restore_db,
    "data": data_step.restore_data,
    "code": code_step.restore_code,
    "readyz": readyz_step.wait_ready,
}


