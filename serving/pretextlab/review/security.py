"""Tokens, hashes, constant-time comparisons and a per-key rate limiter.

Invite and session tokens are 256-bit random strings; only their sha256 is stored, so a copy of the
database opens no session. Every comparison of a secret uses :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque

PID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def new_token() -> str:
    """A fresh secret (invite, session, CSRF): 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def new_pid() -> str:
    """A random opaque public id (reviews, reviewers, cases, submissions): 128 bits as hex, so it never
    starts with '-' (a review id is a command-line argument)."""
    return secrets.token_hex(16)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (False when either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (sliding window, in memory, thread-safe)."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit, self.window = int(limit), float(window)
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and now - q[0] > self.window:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            if len(self._events) > 100_000:  # forget idle keys so memory stays bounded
                for k in [k for k, v in self._events.items() if not v or now - v[-1] > self.window]:
                    del self._events[k]
            return True
