"""Who may use the console and the API: the address allowlist, the console login, the API token,
and the audit line every privileged action leaves in rollback.log."""

from __future__ import annotations

import hmac
import ipaddress
import time

from flask import request, session
from werkzeug.security import check_password_hash, generate_password_hash

from rollback import logbook
from rollback.settings import Settings

from .config import WebConfig
from .shared import SharedStore

SESSION_USER = "rollback_user"
# Checked when the user name is wrong, so a wrong name costs as much time as a wrong password.
_DUMMY_HASH = generate_password_hash("not the password")


def client_address() -> str:
    """The client's address; ProxyFix has already applied TRUSTED_PROXY_HOPS, so this is not spoofable."""
    return request.remote_addr or "-"


def address_allowed(config: WebConfig, address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in net for net in config.allowed_networks if net.version == ip.version)


def credentials_valid(config: WebConfig, user: str, password: str) -> bool:
    if not config.console_enabled:
        return False
    user_ok = hmac.compare_digest(user.encode(), config.admin_user.encode())
    password_ok = check_password_hash(config.admin_password_hash if user_ok else _DUMMY_HASH, password)
    return user_ok and password_ok


def bearer_token_valid(config: WebConfig, header: str | None) -> bool:
    if not config.api_token or not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), config.api_token.encode())


def current_user() -> str | None:
    return session.get(SESSION_USER)


def log_in(user: str) -> None:
    session.clear()  # a fresh session on login: no fixation of a pre-login session
    session.permanent = True
    session[SESSION_USER] = user


def log_out() -> None:
    session.clear()


class LoginThrottle:
    """Too many failed logins from one address within the window → refused until it passes."""

    def __init__(self, config: WebConfig, store: SharedStore):
        self.config, self.store = config, store

    def _key(self, address: str) -> str:
        return f"login-failures:{address}"

    def blocked(self, address: str) -> bool:
        return self.store.count(self._key(address), self.config.login_window_sec) >= self.config.login_max_failures

    def failed(self, address: str) -> None:
        self.store.hit(self._key(address), self.config.login_window_sec)
        # Slows a brute force from many addresses too, at the cost of one thread per attempt.
        time.sleep(self.config.login_failure_delay_sec)

    def succeeded(self, address: str) -> None:
        self.store.reset(self._key(address), self.config.login_window_sec)


def audit(settings: Settings, action: str, outcome: str, who: str | None = None, **details) -> None:
    """One line per privileged action: who, from where, what, and how it ended."""
    line = logbook.format_event("AUDIT", who=who or current_user() or "-", addr=client_address(),
                                action=action, outcome=outcome, **details)
    logbook.append(settings.rollback_log, line)
