"""A persistent answer cache for the `llm` labeler: SQLite, keyed by a hash of (model, messages, temperature).

Every valid answer is committed as soon as it arrives, so an interrupted build resumes without asking again.
One connection is shared between the labeler's threads behind a lock; WAL mode lets other processes read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path

from clearglass.errors import ClearglassError


def request_key(model: str, messages: list[dict[str, str]], temperature: float) -> str:
    """key = sha256(canonical JSON of {model, messages, temperature}), hex."""
    canonical = json.dumps(
        {"model": model, "messages": messages, "temperature": temperature},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class LLMCache:
    """A map from request key to answer text stored in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.OperationalError as e:  # a full disk, no permission, a lock held elsewhere: not the file's fault
            raise ClearglassError(f"{self.path}: cannot open the LLM answer cache ({e})") from None
        except sqlite3.DatabaseError as e:
            raise ClearglassError(f"{self.path}: not a usable LLM answer cache (expected SQLite): {e}") from None

    def get(self, key: str) -> str | None:
        """The cached answer for a key, or None."""
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, answer: str) -> None:
        """Store (or replace) the answer for a key and commit at once."""
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, answer))
                self._db.commit()
            except sqlite3.OperationalError as e:  # e.g. "database or disk is full"
                self._db.rollback()
                raise ClearglassError(f"{self.path}: cannot store an LLM answer in the cache ({e})") from None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
