"""The rollback console (Flask-Admin) at /admin/rollback: snapshots, the two-step restore, live
progress and the history. The address allowlist runs app-wide before any of this; here every
view except the login needs a logged-in session, and CSRFProtect guards every form."""

from __future__ import annotations

from flask import Flask, flash, jsonify, redirect, request, url_for
from flask_admin import Admin, AdminIndexView, BaseView, expose
from flask_admin.theme import Bootstrap4Theme
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from rollback import pg
from rollback.errors import LockHeld, RollbackError
from rollback.ids import validate_snapshot_id
from rollback.manifest import Manifest
from rollback.remote import with_remote_state
from rollback.resources.code import strategy_for
from rollback.space import backup_space

from .access import (LoginThrottle, audit, client_address, credentials_valid, current_user, log_in, log_out)
from .context import WebContext, error_response
from .discarded import plan_for_page, report_or_404, with_reports
from .jobs import active_restore, start_restore, start_snapshot, start_verify
from .progress import history, restore_status

SORT_KEYS = {
    "id": lambda e: e["id"],
    "created": lambda e: e.get("created_at") or "",
    "notes": lambda e: (e.get("notes") or "").lower(),
    "code": lambda e: e.get("app_revision") or "",
    "alembic": lambda e: e.get("alembic_revision") or "",
    "db": lambda e: e["artifacts"]["db"]["size"],
    "data": lambda e: e["artifacts"]["data"]["size"],
    "verified": lambda e: str((e.get("verified") or {}).get("ok")),
    "ready": lambda e: str((e.get("ready_check") or {}).get("status")),
    "remote": lambda e: str((e.get("remote") or {}).get("state")),
}


class LoginForm(FlaskForm):
    username = StringField("User", validators=[DataRequired(), Length(max=200)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1000)])


class RestoreForm(FlaskForm):
    snapshot_id = HiddenField(validators=[DataRequired()])
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])
    confirm = BooleanField("I understand that the database, the data directory and the code will be replaced",
                           validators=[DataRequired()])


class ConsoleView(BaseView):
    """Base of the console's views: login required except for `public_views`."""

    public_views: tuple[str, ...] = ()
    json_views: tuple[str, ...] = ()

    def __init__(self, ctx: WebContext, **kwargs):
        self.ctx = ctx
        super().__init__(**kwargs)

    def is_visible(self) -> bool:
        return current_user() is not None

    def _handle_view(self, name: str, **kwargs):
        if name in self.public_views or current_user():
            return None
        if name in self.json_views:
            return error_response(401, "log in first")
        return redirect(url_for("rollback.login", next=request.full_path.rstrip("?")))

    def render(self, template: str, **kwargs):
        kwargs.update(user=current_user(), canary_enabled=self.ctx.settings.canary_enabled,
                      active=active_restore(self.ctx.settings) if current_user() else None)
        return super().render(template, **kwargs)


class RollbackView(ConsoleView):
    public_views = ("login",)
    json_views = ("status",)

    @expose("/")
    def index(self):
        entries = with_remote_state(self.ctx.settings, Manifest.for_settings(self.ctx.settings).entries())
        sort, direction = _sort_args()
        rows = sorted(entries, key=SORT_KEYS[sort], reverse=direction == "desc") if sort else entries[::-1]
        return self.render("rollback/index.html", rows=rows, sort=sort or "created", direction=direction,
                           latest=entries[-1] if entries else None, space=backup_space(self.ctx.settings))

    @expose("/confirm/<ref>")
    def confirm(self, ref: str):
        active = active_restore(self.ctx.settings)
        if active:
            flash(f"Restore {active['txn']} is running: it is shown instead of starting another.", "warning")
            return redirect(url_for(".progress", txn=active["txn"]))
        return self._confirm_page(ref, RestoreForm())

    def _confirm_page(self, ref: str, form: RestoreForm):
        entry = Manifest.for_settings(self.ctx.settings).resolve(validate_snapshot_id(ref, allow_latest=True))
        form.snapshot_id.data = entry["id"]
        return self.render("rollback/confirm.html", entry=entry, form=form, current=_current_state(self.ctx),
                           plan=plan_for_page(self.ctx.settings, entry["id"]))

    @expose("/restore", methods=("POST",))
    def restore(self):
        form = RestoreForm()
        if not form.validate():
            return self._confirm_page(form.snapshot_id.data or "latest", form), 400
        ref, reason = validate_snapshot_id(form.snapshot_id.data), form.reason.data.strip()
        try:
            doc, _ = start_restore(self.ctx.settings, ref, reason, requested_by=f"console:{current_user()}")
        except LockHeld as exc:
            audit(self.ctx.settings, "restore", "refused", snapshot=ref, error=str(exc))
            return self._show_running(exc)
        except RollbackError as exc:
            audit(self.ctx.settings, "restore", "failed", snapshot=ref, error=str(exc))
            flash(f"Restore not started: {exc}", "error")
            return redirect(url_for(".index"))
        audit(self.ctx.settings, "restore", "queued", txn=doc["txn"], snapshot=ref, reason=reason)
        return redirect(url_for(".progress", txn=doc["txn"]))

    def _show_running(self, exc: LockHeld):
        txn = (exc.holder or {}).get("txn")
        flash(f"Not started: {exc}. The running restore is shown instead." if txn else f"Not started: {exc}.",
              "warning")
        return redirect(url_for(".progress", txn=txn) if txn else url_for(".index"))

    @expose("/restore/<txn>")
    def progress(self, txn: str):
        status = restore_status(self.ctx.settings, txn)
        return self.render("rollback/progress.html", status=status,
                           status_url=url_for(".status", txn=txn))

    @expose("/status/<txn>")
    def status(self, txn: str):
        return jsonify(restore_status(self.ctx.settings, txn))

    @expose("/verify/<snapshot_id>", methods=("POST",))
    def verify(self, snapshot_id: str):
        entry = Manifest.for_settings(self.ctx.settings).get(snapshot_id)
        task_id = start_verify(entry["id"])
        audit(self.ctx.settings, "verify", "queued", snapshot=entry["id"], task=task_id)
        flash(f"Verification of {entry['id']} sent to the worker; the Verified column shows the outcome "
              f"when it ends (reload).", "info")
        return redirect(url_for(".index"))

    @expose("/snapshot", methods=("POST",))
    def snapshot(self):
        notes = request.form.get("notes", "").strip()[:500] or f"console: {current_user()}"
        try:
            task_id = start_snapshot(self.ctx.settings, self.ctx.store, notes)
        except RollbackError as exc:
            audit(self.ctx.settings, "snapshot", "refused" if isinstance(exc, LockHeld) else "failed", error=str(exc))
            flash(f"Snapshot not started: {exc}", "error")
            return redirect(url_for(".index"))
        audit(self.ctx.settings, "snapshot", "queued", task=task_id)
        flash(f"Snapshot sent to the worker (task {task_id}); it appears here when complete.", "info")
        return redirect(url_for(".index"))

    @expose("/login", methods=("GET", "POST"))
    def login(self):
        config = self.ctx.config
        form = LoginForm() if config.console_enabled else None
        if form is not None and request.method == "POST":
            answer = self._attempt_login(form)
            if answer is not None:
                return answer
        return self.render("rollback/login.html", form=form, console_enabled=config.console_enabled)

    def _attempt_login(self, form: LoginForm):
        throttle, address = LoginThrottle(self.ctx.config, self.ctx.store), client_address()
        if throttle.blocked(address):
            audit(self.ctx.settings, "login", "throttled", who=form.username.data or "-")
            return error_response(429, "too many failed logins from this address; try again later")
        if form.validate() and credentials_valid(self.ctx.config, form.username.data, form.password.data):
            throttle.succeeded(address)
            log_in(form.username.data)
            audit(self.ctx.settings, "login", "ok")
            return redirect(_safe_next(request.args.get("next")))
        throttle.failed(address)
        audit(self.ctx.settings, "login", "failed", who=form.username.data or "-")
        flash("Wrong user or password.", "error")
        return None

    @expose("/logout", methods=("POST",))
    def logout(self):
        audit(self.ctx.settings, "logout", "ok")
        log_out()
        return redirect(url_for(".login"))


class HistoryView(ConsoleView):
    @expose("/")
    def index(self):
        return self.render("rollback/history.html", rows=with_reports(self.ctx.settings, history(self.ctx.settings)))

    @expose("/discarded/<txn>")
    def discarded(self, txn: str):
        return self.render("rollback/discarded.html", report=report_or_404(self.ctx.settings, txn))


class HomeView(AdminIndexView):
    """/admin itself: the console is the only thing here."""

    def is_visible(self) -> bool:
        return False

    @expose("/")
    def index(self):
        return redirect(url_for("rollback.index"))


def init_console(app: Flask, ctx: WebContext) -> Admin:
    admin = Admin(app, name="Rollback", url="/admin", theme=Bootstrap4Theme(fluid=True),
                  index_view=HomeView(url="/admin"))
    admin.add_view(RollbackView(ctx, name="Snapshots", endpoint="rollback", url="/admin/rollback"))
    admin.add_view(HistoryView(ctx, name="History", endpoint="rollback_history", url="/admin/rollback/history"))
    app.jinja_env.filters["size"] = human_size
    app.jinja_env.filters["short"] = lambda value, n=12: (value or "-")[:n]
    return admin


# -- helpers ----------------------------------------------------------------------------------
def _sort_args() -> tuple[str | None, str]:
    sort = request.args.get("sort")
    direction = "asc" if request.args.get("dir") == "asc" else "desc"
    return (sort if sort in SORT_KEYS else None), direction


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never an open redirect to another site."""
    if target and target.startswith("/admin/rollback") and not target.startswith("//"):
        return target
    return url_for("rollback.index")


def _current_state(ctx: WebContext) -> dict:
    """What is deployed now, for the confirmation page; failures are shown, not raised."""
    state = {}
    try:
        revision, dirty = strategy_for(ctx.settings).current_revision()
        state["code"] = revision + (" (uncommitted changes)" if dirty else "")
    except (RollbackError, OSError) as exc:
        state["code"] = f"unknown: {exc}"
    try:
        state["alembic"] = pg.alembic_revision(ctx.settings.database) or "(empty schema)"
    except RollbackError as exc:
        state["alembic"] = f"unknown: {exc}"
    return state


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
