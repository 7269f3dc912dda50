"""Code: bring APP_REPO_DIR back to the snapshot's revision, behind a small strategy interface.

`git` (default) moves HEAD with `git reset --hard`; the revision it replaces and any uncommitted
tracked changes are kept under refs/rollback/ so nothing is lost. Issue C adds a `render` strategy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import RollbackError
from ..proc import output, run
from ..settings import Settings
from .context import StepContext

GIT_TIMEOUT = 120


class CodeStrategy(Protocol):
    def current_revision(self) -> tuple[str, bool]: ...
    def check_available(self, revision: str) -> None: ...
    def restore(self, ctx: StepContext, revision: str) -> str: ...


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

    def restore(self, ctx: StepContext, revision: str) -> str:
        head, dirty = self.current_revision()
        if head == revision and not dirty:
            return f"already at {revision[:12]}"
        tag = ctx.txn.removeprefix("txn-")
        if not ctx.marks().get("code_pre_ref"):
            self._git("update-ref", f"refs/rollback/pre-{tag}", head)
            ctx.mark("code_pre_ref", {"ref": f"refs/rollback/pre-{tag}", "commit": head})
        if dirty:
            stash = self._git("stash", "create", f"rollback {ctx.txn}: uncommitted changes before restore")
            if stash:
                self._git("update-ref", f"refs/rollback/stash-{tag}", stash)
                ctx.mark("code_stash_ref", f"refs/rollback/stash-{tag}")
        ctx.progress(1, 2, f"git reset --hard {revision[:12]}")
        self._git("reset", "--hard", "--quiet", revision)
        now, _ = self.current_revision()
        if now != revision:
            raise RollbackError(f"HEAD is {now[:12]} after reset, expected {revision[:12]}")
        saved = f"; uncommitted changes kept in refs/rollback/stash-{tag}" if dirty else ""
        return f"{head[:12]} -> {revision[:12]} (previous kept as refs/rollback/pre-{tag}{saved})"


def strategy_for(settings: Settings) -> CodeStrategy:
    if settings.code_rollback_strategy == "git":
        return GitStrategy(settings.app_repo_dir)
    raise RollbackError(f"CODE_ROLLBACK_STRATEGY {settings.code_rollback_strategy} is not available")


def restore_code(ctx: StepContext) -> str:
    revision = ctx.snapshot.get("app_revision")
    if not revision:
        return "the snapshot recorded no code revision; code left as it is"
    ctx.progress(0, 2, f"code back to {revision[:12]}")
    detail = strategy_for(ctx.settings).restore(ctx, revision)
    ctx.progress(2, 2, detail)
    return detail
