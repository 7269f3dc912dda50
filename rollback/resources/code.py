"""Code: APP_REPO_DIR's revision, read for a snapshot and brought back for a restore, behind a small
strategy interface.

`git` (default) moves HEAD with `git reset --hard`; the revision it replaces and any uncommitted
tracked changes are kept under refs/rollback/ so nothing is lost. `render` asks Render's API to
roll the service back to the deploy built from the snapshot's commit and waits until it is live.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from .. import logbook, render
from ..errors import RollbackError
from ..fsutil import syncfs
from ..proc import output, run
from ..settings import Settings
from . import ResumableStep

GIT_TIMEOUT = 120
# How long a git command of the code step waits for another git's .git/index.lock to go before calling it stale.
INDEX_LOCK_WAIT_SEC = 10.0
_INDEX_LOCK_ERRORS = ("index.lock", "remove the file manually")  # git's message; its head may be cut off


class CodeStrategy(Protocol):
    def current_revision(self) -> tuple[str, bool]: ...
    def check_available(self, revision: str) -> str | None: ...  # how the revision will come back, when worth saying
    def restore(self, step: ResumableStep, revision: str) -> str: ...


class GitStrategy:
    def __init__(self, repo: Path):
        self.repo = Path(repo)

    def _git(self, *args: str) -> str:
        return output(["git", "-C", str(self.repo), *args], timeout=GIT_TIMEOUT)

    def current_revision(self) -> tuple[str, bool]:
        """(HEAD commit, whether tracked files have uncommitted changes)."""
        try:
            head = self._git("rev-parse", "--verify", "HEAD^{commit}")
        except RollbackError as exc:
            raise RollbackError(f"APP_REPO_DIR {self.repo}: cannot read the git revision ({exc})") from None
        dirty = bool(self._git("status", "--porcelain", "--untracked-files=no"))
        return head, dirty

    def check_available(self, revision: str) -> None:
        try:
            run(["git", "-C", str(self.repo), "cat-file", "-e", f"{revision}^{{commit}}"], timeout=GIT_TIMEOUT)
        except RollbackError:
            raise RollbackError(f"revision {revision} is not in the git repository {self.repo}") from None

    def restore(self, step: ResumableStep, revision: str) -> str:
        # First: a git command killed in an earlier attempt leaves index.lock, on which `stash create`
        # and `reset` would fail forever (and which would break the next deploy's git).
        self._clear_stale_index_lock(step)
        head, dirty = self.current_revision()
        if head == revision and not dirty:
            syncfs(self.repo)  # an earlier attempt may have reset the tree and died before syncing it
            return f"already at {revision[:12]}"
        tag = step.txn.removeprefix("txn-")
        if not step.marks().get("code_pre_ref"):
            self._git("update-ref", f"refs/rollback/pre-{tag}", head)
            step.mark("code_pre_ref", {"ref": f"refs/rollback/pre-{tag}", "commit": head})
        if dirty:
            stash = self._git_taking_index_lock(step, "stash", "create",
                                                f"rollback {step.txn}: uncommitted changes before restore")
            if stash:
                self._git("update-ref", f"refs/rollback/stash-{tag}", stash)
                step.mark("code_stash_ref", f"refs/rollback/stash-{tag}")
        step.progress(1, 2, f"git reset --hard {revision[:12]}")
        self._git_taking_index_lock(step, "reset", "--hard", "--quiet", revision)
        syncfs(self.repo)  # the journal will say "code ok": the working tree must be on disk first
        now, _ = self.current_revision()
        if now != revision:
            raise RollbackError(f"HEAD is {now[:12]} after reset, expected {revision[:12]}")
        saved = f"; uncommitted changes kept in refs/rollback/stash-{tag}" if dirty else ""
        return f"{head[:12]} -> {revision[:12]} (previous kept as refs/rollback/pre-{tag}{saved})"

    def _git_taking_index_lock(self, step: ResumableStep, *args: str) -> str:
        """A git command that takes .git/index.lock. Another git may hold it for a moment (an operator's
        `git status`, or a git of a killed attempt still finishing its last write): wait for it as git
        advises, up to INDEX_LOCK_WAIT_SEC; a lock still there then is stale (we hold the service lock),
        and is removed and logged before the one retry."""
        try:
            return self._git(*args)
        except RollbackError as exc:
            if not any(marker in str(exc) for marker in _INDEX_LOCK_ERRORS):
                raise
        lock = self._index_lock()
        deadline = time.monotonic() + INDEX_LOCK_WAIT_SEC
        while lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._clear_stale_index_lock(step)
        return self._git(*args)

    def _index_lock(self) -> Path:
        lock = Path(self._git("rev-parse", "--git-path", "index.lock"))
        return lock if lock.is_absolute() else self.repo / lock

    def _clear_stale_index_lock(self, step: ResumableStep) -> None:
        """A worker killed during `git reset` leaves .git/index.lock; a re-run of this step (we hold the
        service lock) would fail on it forever. Remove it, and say so in the log."""
        lock = self._index_lock()
        if lock.exists():
            lock.unlink()
            logbook.rollback_event(step.settings.rollback_log, step.txn, "code", "stale_lock_removed", path=str(lock))


AUTODEPLOY_OFF_NOTE = ("Render auto-deploy was turned off (RENDER_DISABLE_AUTODEPLOY_ON_ROLLBACK=true) so that the "
                       "next push does not deploy over the restored code; turn it back on in the Render Dashboard "
                       "(service Settings > Auto-Deploy) or with PATCH /v1/services/{id} {\"autoDeploy\": \"yes\"} "
                       "once the fix is pushed")


class RenderStrategy:
    """Code lives in Render's deploys: the revision is the live deploy's commit; a restore is a rollback
    to the commit's retained build, or a rebuild of the commit when Render no longer keeps that build."""

    def __init__(self, client: render.RenderClient, timeout: float, interval: float, retention: int = 5,
                 disable_autodeploy: bool = True):
        self.client, self.timeout, self.interval = client, timeout, interval
        self.retention, self.disable_autodeploy = retention, disable_autodeploy

    @classmethod
    def from_settings(cls, settings: Settings) -> "RenderStrategy":
        """A Render deploy is waited for like an external command, polled like /readyz."""
        return cls(render.RenderClient.from_settings(settings), timeout=settings.command_timeout_sec,
                   interval=settings.ready_interval_sec, retention=settings.render_build_retention,
                   disable_autodeploy=settings.render_disable_autodeploy_on_rollback)

    def current_revision(self) -> tuple[str, bool]:
        live = self.client.live_deploy()
        if live is None or not live.commit:
            raise RollbackError(f"Render service {self.client.service_id} has no live deploy with a commit")
        return live.commit, False  # a Render deploy is a build of a commit: nothing uncommitted

    def check_available(self, revision: str) -> str:
        """The preflight's decision (raises when Render cannot bring the commit back at all)."""
        return render.plan_code_restore(self.client, revision, self.retention).describe()

    def restore(self, step: ResumableStep, revision: str) -> str:
        # A re-run (the worker restarts when Render swaps the instance) follows the deploy it started.
        started = step.marks().get("render_rollback")
        if not started:
            plan = render.plan_code_restore(self.client, revision, self.retention)
            if plan.action == render.ALREADY_LIVE:
                return plan.describe()
            step.progress(1, 2, plan.describe())
            if plan.action == render.ROLLBACK:
                new = self.client.rollback(plan.deploy)
            else:
                new = self.client.deploy_commit(revision)
            started = {"target": plan.deploy.id, "deploy": new.id, "action": plan.action, "commit": revision}
            step.mark("render_rollback", started)
        self._turn_autodeploy_off(step)
        render.wait_until_live(self.client, started["deploy"], self.timeout, self.interval,
                               progress=lambda m: step.progress(1, 2, m))
        if started.get("action") == render.REBUILD:
            return (f"Render rebuild of {revision[:12]} (build of {started['target']} expired): "
                    f"deploy {started['deploy']} live")
        return f"Render rollback to deploy {started['target']} ({revision[:12]}): deploy {started['deploy']} live"

    def _turn_autodeploy_off(self, step: ResumableStep) -> None:
        """Render's API rollback leaves auto-deploy on: the next push would deploy over the restore."""
        if not self.disable_autodeploy or "render_autodeploy_off" in step.marks():
            return
        try:
            self.client.set_auto_deploy(False)
        except render.RenderApiError as exc:  # the code still comes back: a warning, not a failed step
            step.mark("render_autodeploy_off", False)
            step.journal.add_warning(step.txn, f"Render auto-deploy is still on: turning it off failed ({exc}); "
                                               f"turn it off in the Render Dashboard before the next push")
            return
        step.mark("render_autodeploy_off", True)
        step.journal.add_note(step.txn, AUTODEPLOY_OFF_NOTE)
        logbook.rollback_event(step.settings.rollback_log, step.txn, "code", "autodeploy_off",
                               service=self.client.service_id)


def strategy_for(settings: Settings) -> CodeStrategy:
    if settings.code_rollback_strategy == "git":
        return GitStrategy(settings.app_repo_dir)
    if settings.code_rollback_strategy == "render":
        return RenderStrategy.from_settings(settings)
    raise RollbackError(f"CODE_ROLLBACK_STRATEGY {settings.code_rollback_strategy} is not available")
