"""Operator CLI: `python -m manage.rollback check|snapshot|list|show|verify|restore|status|resume|prune|standby|canary|
fingerprint|plan|discarded|carry-forward|drill|pull`.

By default work is sent to the Celery worker and followed live; `--local` runs the same core
steps in this process (the fallback when Redis is down). Exit codes (manage/exit_codes.py): 0 success,
1 failed, 2 bad input, 3 another snapshot/restore holds the lock.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rollback import logbook
from rollback.errors import LockHeld, RollbackError
from rollback.ids import validate_snapshot_id, validate_txn_id
from rollback.journal import RESTORE_STEPS, Journal, TxnStatus, is_success, steps_left
from rollback.manifest import Manifest
from rollback.settings import Settings

from . import discarded as discarded_cli, drill, plan as plan_cli
from . import remote as remote_cli
from .follow import follow, follow_canary, follow_journal, require_worker
from .exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, UsageError, exit_code_for


class Printer:
    """Progress lines on stderr, one per change, so stdout stays clean for --json."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._last: dict[str, str] = {}

    def __call__(self, step: str, done: int, total: int, message: str) -> None:
        if self.quiet or self._last.get(step) == message:
            return
        self._last[step] = message
        pct = f"{done * 100 // total:3d}%" if total else "    "
        print(f"  [{step:<9}] {pct} {message}", file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m manage.rollback", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("check", help="validate the configuration against the live system (exit 1 on any FAIL)")
    s.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    s.add_argument("--worker", action="store_true",
                   help="run the checks on the Celery worker (where snapshots and restores run)")

    s = sub.add_parser("snapshot", help="take a snapshot of database, data dir and revisions")
    s.add_argument("--notes", default="", help="free text stored with the snapshot")
    s.add_argument("--json", action="store_true", help="print the manifest entry as one JSON object")
    _add_mode(s)

    s = sub.add_parser("list", help="list snapshots, newest first")
    s.add_argument("--json", action="store_true")
    remote_cli.add_list_flag(s)

    s = sub.add_parser("show", help="show one snapshot's manifest entry")
    s.add_argument("snapshot_id")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("verify", help="re-check sizes, SHA-256 and dump readability of a snapshot")
    s.add_argument("snapshot_id", help="an id or 'latest'")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("restore", help="restore a snapshot: preflight, db, data, code, readyz")
    s.add_argument("--snapshot", required=True, help="a snapshot id or 'latest'")
    s.add_argument("--reason", required=True, help="why (recorded in the journal and the log)")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--json", action="store_true", help="print the final journal summary as JSON")
    _add_mode(s)

    s = sub.add_parser("status", help="show a restore transaction from its journal")
    s.add_argument("txn", nargs="?", help="a txn id; default: the newest")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("resume", help="re-run the unfinished steps of a failed or interrupted restore")
    s.add_argument("txn")
    s.add_argument("--json", action="store_true")
    _add_mode(s)

    s = sub.add_parser("standby", help="prepare the warm standby of a snapshot now, in this process")
    s.add_argument("snapshot_id", nargs="?", default="latest", help="an id or 'latest' (default)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("canary", help="probe /readyz now; with --snapshot or --deploy-id: watch a deploy on the "
                                      "worker and roll back automatically if it does not become ready")
    s.add_argument("--snapshot", help="watch, and restore this snapshot if not ready (default: the newest taken "
                                      "before this deploy)")
    s.add_argument("--deploy-id", help="watch this deploy; at most one automatic rollback each")
    s.add_argument("--no-wait", action="store_true", help="enqueue and print the task id without following")
    s.add_argument("--json", action="store_true", help="print the verdict as one JSON object")

    s = sub.add_parser("fingerprint", help="print a fingerprint of the live state to compare before/after")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("prune", help="apply retention now (BACKUP_RETENTION)")
    s.add_argument("--json", action="store_true")
    drill.add_parser(sub)
    plan_cli.add_parser(sub)
    discarded_cli.add_parsers(sub)
    remote_cli.add_parser(sub)
    return p


def _add_mode(s: argparse.ArgumentParser) -> None:
    s.add_argument("--local", action="store_true", help="run in this process instead of the Celery worker")
    s.add_argument("--no-wait", action="store_true", help="enqueue and print the task id without following")


# -- commands ---------------------------------------------------------------------------------
CHECK_WORKER_TIMEOUT_SEC = 180.0


def cmd_check(settings: Settings, args, out: Printer) -> int:
    """One line per check; exit 0 when none failed (warnings included), 1 otherwise."""
    from rollback.check import format_line, run_checks

    if args.worker:
        from tasks.snapshot import check_configuration

        require_worker()
        result = check_configuration.apply_async()
        try:
            results = result.get(timeout=CHECK_WORKER_TIMEOUT_SEC)
        except Exception as exc:  # timeout (a worker without this task), or the task itself failed
            why = logbook.mask_secrets(str(exc)) or "no answer"
            raise RollbackError(f"the worker did not complete the check ({type(exc).__name__}: {why}); "
                                f"is it running this version?") from None
    else:
        results = [r.as_dict() for r in run_checks(settings)]
    if args.json:
        _print_json(results)
    else:
        for line in results:
            print(format_line(line))
    failed = [r["name"] for r in results if not r["ok"]]
    if failed:
        out.line(f"check: {len(failed)} failed ({', '.join(failed)})")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_snapshot(settings: Settings, args, out: Printer) -> int:
    if args.local:
        from rollback.snapshot import create_snapshot

        from rollback.verify import index_after_snapshot

        entry = create_snapshot(settings, notes=args.notes, progress=out)
        # No worker here to index the archive in the background: do it now (an entry created while the
        # snapshot ran is caught here rather than by the restore).
        out("index", 0, 1, "reading the data archive back (member policy, listing, tree hash)")
        index = index_after_snapshot(settings, entry["id"])
        if index.get("unsafe"):
            print(f"snapshot {entry['id']} recorded, but its data archive holds a member a restore refuses "
                  f"({index['unsafe']}; created while the snapshot ran): remove it and snapshot again", file=sys.stderr)
            return EXIT_FAILED
        if index.get("mismatch"):
            print(f"snapshot {entry['id']} recorded, but its data archive does not match the manifest: "
                  f"{index['error']}", file=sys.stderr)
            return EXIT_FAILED
        if not index["indexed"]:
            # The snapshot itself is complete and verified; only the listing is missing, and its first reader
            # (plan, drill, cold preflight) builds it. Usable, so exit 0 — but say it was not indexed.
            print(f"warning: snapshot {entry['id']} recorded and verified, but not indexed: {index['error']} "
                  f"(its first reader indexes it)", file=sys.stderr)
        else:
            out("index", 1, 1, f"{index['files']} files, {index['bytes']} bytes indexed")
    else:
        from tasks.snapshot import take_snapshot

        require_worker()
        result = take_snapshot.apply_async(kwargs={"notes": args.notes})
        if args.no_wait:
            return _print_json({"task_id": result.id}) if args.json else _say(f"snapshot task {result.id} enqueued")
        entry = follow([("snapshot", result)], out)[0]
    if args.json:
        return _print_json(entry)
    print(f"snapshot {entry['id']} complete: db {entry['artifacts']['db']['size']} bytes, "
          f"data {entry['artifacts']['data']['size']} bytes, code {entry['app_revision'][:12]}, "
          f"alembic {entry['alembic_revision']}")
    return EXIT_OK


def cmd_list(settings: Settings, args, out: Printer) -> int:
    if args.remote:
        return remote_cli.list_remote(settings, args, out)
    entries = remote_cli.with_state(settings, list(reversed(Manifest.for_settings(settings).entries())))
    if args.json:
        return _print_json(entries)
    if not entries:
        print(f"no snapshots in {settings.backup_dir}")
        return EXIT_OK
    print(f"{'ID':<24} {'CREATED':<21} {'CODE':<12} {'ALEMBIC':<14} {'DB':>10} {'DATA':>10} {'READY':<6} "
          f"{'PROVEN RESTORABLE':<25} {'REMOTE':<17} NOTES")
    for e in entries:
        ready = (e.get("ready_check") or {}).get("status", "-")
        print(f"{e['id']:<24} {e['created_at']:<21} {(e.get('app_revision') or '-')[:12]:<12} "
              f"{str(e.get('alembic_revision') or '-')[:14]:<14} {_size(e['artifacts']['db']['size']):>10} "
              f"{_size(e['artifacts']['data']['size']):>10} {ready:<6} {drill.proven(e.get('drill')):<25} "
              f"{remote_cli.state_cell(e):<17} {e.get('notes', '')}")
    return EXIT_OK


def cmd_show(settings: Settings, args, out: Printer) -> int:
    entry = Manifest.for_settings(settings).resolve(validate_snapshot_id(args.snapshot_id, allow_latest=True))
    entry = remote_cli.with_state(settings, [entry])[0]
    if args.json:
        return _print_json(entry)
    print(json.dumps(entry, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_verify(settings: Settings, args, out: Printer) -> int:
    from rollback.verify import verify_snapshot

    report = verify_snapshot(settings, validate_snapshot_id(args.snapshot_id, allow_latest=True), progress=out)
    if args.json:
        return _print_json(report)
    print(f"snapshot {report['id']} verified:")
    for line in report["checks"]:
        print(f"  ok  {line}")
    return EXIT_OK


def cmd_restore(settings: Settings, args, out: Printer) -> int:
    ref = validate_snapshot_id(args.snapshot, allow_latest=True)
    entry = remote_cli.resolve_anywhere(settings, ref)  # BACKUP_DIR lost: the bucket's copy
    if not args.yes:
        _confirm(settings, entry)
    if args.local:
        from rollback import restore as core

        doc = core.begin_restore(settings, entry["id"], args.reason, auto=False, requested_by="cli --local")
        args.txn = doc["txn"]  # for the AUDIT line
        out.line(f"restore {doc['txn']} of snapshot {entry['id']} (local)")
        return _finish_local(settings, doc["txn"], args, out)
    from tasks.restore import enqueue_restore

    require_worker()
    doc, result = enqueue_restore(entry["id"], args.reason, auto=False, requested_by="cli", settings=settings)
    args.txn = doc["txn"]  # for the AUDIT line
    out.line(f"restore {doc['txn']} of snapshot {entry['id']} enqueued")
    return _follow_restore(settings, doc["txn"], result, args, out)


def cmd_resume(settings: Settings, args, out: Printer) -> int:
    from rollback import restore as core

    txn = validate_txn_id(args.txn)
    if not args.local:
        require_worker()  # before claiming: with no worker the txn must stay as it was
    doc = core.resume(settings, txn)
    if is_success(doc["status"]):  # every step had finished; only the final record was missing
        out.line(f"{txn}: every step was already done; recorded as {doc['status']}")
        return _report_restore(core.restore_summary(doc), args)
    out.line(f"resuming {txn} (attempt {doc['attempt']})")
    if args.local:
        return _finish_local(settings, txn, args, out)
    from tasks.restore import send_canvas

    result = send_canvas(settings, txn, doc["attempt"], steps_left(doc))
    return _follow_restore(settings, txn, result, args, out)


def cmd_status(settings: Settings, args, out: Printer) -> int:
    from rollback.restore import restore_summary

    journal = Journal(settings.backup_dir)
    if args.txn:
        doc = journal.load(validate_txn_id(args.txn))
    else:
        docs = journal.all()
        if not docs:
            raise UsageError(f"no restore transactions in {journal.dir}")
        doc = docs[-1]
    summary = restore_summary(doc)
    if args.json:
        return _print_json(summary)
    _print_summary(summary)
    return EXIT_FAILED if summary["status"] == TxnStatus.FAILED else EXIT_OK


def cmd_prune(settings: Settings, args, out: Printer) -> int:
    from rollback.retention import prune

    report = prune(settings)
    if args.json:
        return _print_json(report)
    print(f"pruned {len(report['removed'])} snapshot(s): {', '.join(report['removed']) or 'none'}; "
          f"{len(report['kept'])} kept")
    return EXIT_OK


def cmd_standby(settings: Settings, args, out: Printer) -> int:
    from rollback.standby import prepare_standby

    entry = Manifest.for_settings(settings).resolve(validate_snapshot_id(args.snapshot_id, allow_latest=True))
    record = prepare_standby(settings, entry["id"], progress=out)
    if args.json:
        return _print_json(record)
    print(f"warm standby of {record['snapshot_id']} ready: database {record['database']}, tree {record['tree']}")
    return EXIT_OK


def cmd_canary(settings: Settings, args, out: Printer) -> int:
    """Exit 0 when the deploy is ready, 1 when it is not (rolled back or not), 2 on bad input.

    Without --snapshot or --deploy-id: one probe of READYZ_URL now, in this process (no worker, no
    rollback) — the runbook's staging check. With either: the watch through the worker."""
    from rollback.canary import new_deploy_id, validate_deploy_id
    from tasks.canary import enqueue_canary

    if not args.snapshot and not args.deploy_id:
        if args.no_wait:
            raise UsageError("--no-wait applies to a watch: give --deploy-id or --snapshot")
        return _probe_readyz(settings, args)
    snapshot = validate_snapshot_id(args.snapshot, allow_latest=True) if args.snapshot else None
    deploy_id = validate_deploy_id(args.deploy_id) if args.deploy_id else new_deploy_id()
    require_worker()
    result = enqueue_canary(deploy_id, snapshot)
    if args.no_wait:
        payload = {"deploy_id": deploy_id, "task_id": result.id}
        return _print_json(payload) if args.json else _say(f"canary of deploy {deploy_id} enqueued (task {result.id})")
    out.line(f"canary of deploy {deploy_id} enqueued (task {result.id})")
    verdict = follow_canary(result, out)
    if args.json:
        _print_json(verdict)
    else:
        print(f"canary of deploy {deploy_id}: {verdict['status'].upper()}: {verdict['message']}")
    return EXIT_OK if verdict["status"] == "ready" else EXIT_FAILED


def _probe_readyz(settings: Settings, args) -> int:
    from rollback.check import probe_readyz

    report = probe_readyz(settings.readyz_url)
    report["status"] = "ready" if report["ready"] else "not_ready"
    if args.json:
        _print_json(report)
    else:
        answer = report["error"] or f"HTTP {report['http_status']}"
        print(f"readyz {report['url']}: {answer}: {report['status'].upper().replace('_', ' ')} ({report['ms']:.0f} ms)")
        for name, check in (report["checks"] or {}).items():
            if isinstance(check, dict):
                word = "ok" if check.get("ok") else "FAIL"
                print(f"  {word:<4}  {name:<12}  {check.get('detail', '')}")
        if report["checks"] is None and report["body"] and not report["error"]:
            print(f"  body: {report['body']}")
    return EXIT_OK if report["ready"] else EXIT_FAILED


def cmd_fingerprint(settings: Settings, args, out: Printer) -> int:
    from rollback.fingerprint import fingerprint

    fp = fingerprint(settings)
    if args.json:
        return _print_json(fp)
    for key in ("code", "alembic", "schema", "data"):
        print(f"{key:<8} {fp[key]}")
    for table, digest in fp["rows"].items():
        print(f"{'rows':<8} {table}: {digest}")
    return EXIT_OK


COMMANDS = {"check": cmd_check, "snapshot": cmd_snapshot, "list": cmd_list, "show": cmd_show, "verify": cmd_verify,
            "restore": cmd_restore, "resume": cmd_resume, "status": cmd_status, "prune": cmd_prune,
            "fingerprint": cmd_fingerprint, "standby": cmd_standby, "canary": cmd_canary}
COMMANDS["drill"] = drill.run
COMMANDS.update({"plan": plan_cli.run, "discarded": discarded_cli.run_discarded,
                 "carry-forward": discarded_cli.run_carry_forward})
COMMANDS["pull"] = remote_cli.cmd_pull


# -- helpers ----------------------------------------------------------------------------------
def _finish_local(settings: Settings, txn: str, args, out: Printer) -> int:
    from rollback.restore import restore_summary, run_remaining
    from rollback.verify import needs_verification_after_restore

    try:
        doc = run_remaining(settings, txn, progress=out)
    except RollbackError:
        doc = Journal(settings.backup_dir).load(txn)
    code = _report_restore(restore_summary(doc), args)
    if needs_verification_after_restore(doc):
        _verify_after_local_standby_restore(settings, doc, out)
    if is_success(doc["status"]):  # the worker makes it in the background; here, once the restore is reported
        discarded_cli.report_after_local_restore(settings, doc["txn"], out)
    return code


def _verify_after_local_standby_restore(settings: Settings, doc: dict, out: Printer) -> None:
    """The worker verifies in the background what a standby-backed restore did not read; in this
    process it is done here, once the restore is reported. A mismatch is alerted and logged; it does
    not change the restore's exit code (the restore did not use those files)."""
    from rollback.verify import verify_after_standby_restore

    out.line(f"verifying the artifacts of {doc['snapshot_id']} (the warm standby restore did not read them)")
    report = verify_after_standby_restore(settings, doc["snapshot_id"], doc["txn"])
    if report["ok"]:
        out.line(f"  artifacts of {doc['snapshot_id']} verified")
    else:
        out.line(f"warning: the artifacts of {doc['snapshot_id']} do not match the manifest: {report['error']}")


def _follow_restore(settings: Settings, txn: str, result, args, out: Printer) -> int:
    from rollback.restore import restore_summary
    from tasks.restore import step_results

    if args.no_wait:
        payload = {"txn": txn, "task_id": result.id}
        return _print_json(payload) if args.json else _say(f"restore {txn} enqueued (task {result.id})")
    results = step_results(result)
    steps = [s for s in RESTORE_STEPS][-len(results):]
    try:
        follow(list(zip(steps, results)), out)
    except RollbackError:
        pass  # the journal below has the whole story
    except Exception as exc:  # the result backend went away (Redis restarted ...); the journal has not
        out.line(f"  lost the Celery result backend ({type(exc).__name__}: {logbook.mask_secrets(str(exc))}); "
                 f"following the journal instead")
        follow_journal(settings, txn, out)
    return _report_restore(restore_summary(Journal(settings.backup_dir).load(txn)), args)


def _report_restore(summary: dict, args) -> int:
    if args.json:
        _print_json(summary)
    else:
        _print_summary(summary)
    return EXIT_OK if is_success(summary["status"]) else EXIT_FAILED


def _print_summary(summary: dict) -> None:
    print(f"restore {summary['txn']} of {summary['snapshot_id']}: {summary['status'].upper()}"
          f" (reason: {summary['reason']})")
    for step in summary["steps"]:
        took = f"{step['duration_sec']:.2f}s" if step["duration_sec"] is not None else "-"
        print(f"  {step['step']:<9} {step['status']:<11} {took:>8}  {step['error'] or step['detail'] or ''}")
    for warning in summary.get("warnings") or []:
        print(f"warning: {warning}")
    for note in summary.get("notes") or []:
        print(f"note: {note}")
    if summary.get("error"):
        print(f"error: {summary['error']}")


def _confirm(settings: Settings, entry: dict) -> None:
    if not sys.stdin.isatty():
        raise UsageError("refusing to restore without confirmation: pass --yes (stdin is not a terminal)")
    print(f"Restore snapshot {entry['id']} ({entry.get('notes') or 'no notes'}) over database "
          f"{settings.database.dbname}, {settings.data_base_dir} and {settings.app_repo_dir}?", file=sys.stderr)
    if input("Type 'restore' to continue: ").strip() != "restore":
        raise UsageError("restore cancelled")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_json(obj) -> int:
    print(json.dumps(obj, indent=2, ensure_ascii=False))
    return EXIT_OK


def _say(text: str) -> int:
    print(text)
    return EXIT_OK


PRIVILEGED = ("snapshot", "restore", "resume", "prune", "standby", "canary", "drill", "pull", "carry-forward")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Printer()
    settings = None
    code, error = EXIT_FAILED, None
    try:
        settings = Settings.from_env()
        code = COMMANDS[args.command](settings, args, out)
        return code
    except RollbackError as exc:
        code, error = exit_code_for(exc), exc
        print(f"error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        error = "interrupted"
        print("interrupted; a restore sent to the worker keeps running (see `status`)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if settings is not None and args.command in PRIVILEGED:
            _audit(settings, args, code, error)


def _audit(settings: Settings, args, code: int, error) -> None:
    """One AUDIT line per privileged CLI action: the OS user, "local", what, how it ended."""
    outcome = "ok" if code == EXIT_OK else ("refused" if isinstance(error, LockHeld) or code == EXIT_BAD_INPUT
                                            else "failed")
    details = {"exit": str(code)}
    for name in ("snapshot", "txn", "deploy_id"):
        value = getattr(args, name, None)
        if value:
            details[name] = str(value)
    if getattr(args, "local", False):
        details["mode"] = "local"
    if error is not None:
        details["error"] = str(error)[:300]
    try:
        logbook.audit(settings.rollback_log, logbook.local_operator(), "local", args.command, outcome, **details)
    except OSError as exc:  # the audit must not turn a done action into a failure; say it on stderr
        print(f"warning: could not write the audit line to {settings.rollback_log}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
