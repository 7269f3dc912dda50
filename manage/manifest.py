"""`python -m manage.manifest check|sign`: verify the manifest's HMAC, or sign an unsigned manifest
after enabling MANIFEST_HMAC_KEY."""

from __future__ import annotations

import sys
from typing import Sequence

from rollback.errors import RollbackError
from rollback.manifest import Manifest
from rollback.settings import Settings

from .exit_codes import EXIT_BAD_INPUT, EXIT_OK, exit_code_for

USAGE = "usage: python -m manage.manifest check|sign"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["check"], ["sign"]):
        print(USAGE, file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        manifest = Manifest.for_settings(Settings.from_env())
        entries = manifest.sign() if args == ["sign"] else manifest.entries()
    except RollbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    signed = "signed" if manifest.hmac_key else "not signed (MANIFEST_HMAC_KEY unset)"
    print(f"{manifest.path}: {len(entries)} snapshot(s), {signed}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
