"""A persistent cache of model calls (responses and judgments), keyed by (model, parameters, messages).

SQLite in WAL mode, one committed row per finished call: a crash loses at most the calls in flight, a rerun
never pays twice for a finished one, and the primary key makes a duplicate impossible. No credentials are part
of a key or a row (the API key lives in the environment only)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path


def cache_key(model: dict, params: dict, messages: list[dict]) -> str:
    blob = json.dumps({"model": model, "params": params, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT, who TEXT, "
                        "text TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, finish_reason TEXT)")
        self.lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT text, prompt_tokens, completion_tokens, finish_reason FROM calls "
                                  "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"text": row[0], "prompt_tokens": row[1], "completion_tokens": row[2], "finish_reason": row[3]}

    def put(self, key: str, kind: str, who: str, result: dict) -> None:
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key, kind, who, result["text"], result["prompt_tokens"], result["completion_tokens"],
                             result["finish_reason"]))

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self.db.close()
