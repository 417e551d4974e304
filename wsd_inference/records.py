"""Resumable JSONL output: records are appended to OUT.partial (fsync per batch) and renamed to OUT when all
prompts are done, so a reader never mistakes an unfinished file for a finished one. A rerun skips done ids.
OUT.meta.json records the settings; resuming with other settings is refused rather than mixing results."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pilot_core.atomic import atomic_write_json
from pilot_core.errors import UserError
from pilot_core.method_record import MethodRecord


def _read_records(path: Path, tolerate_torn_tail: bool) -> list[dict]:
    data = path.read_bytes()
    records, good_end, pos = [], 0, 0
    for raw in data.splitlines(keepends=True):
        pos += len(raw)
        if not raw.strip():
            good_end = pos
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "id" not in rec or not raw.endswith(b"\n"):
                raise ValueError
        except ValueError:
            if tolerate_torn_tail and pos == len(data):  # the last line of a killed run: drop it
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                break
            raise UserError(f"{path}:{len(records) + 1}: not a record written by pilot; use a new --output") from None
        records.append(rec)
        good_end = pos
    return records


class ResumableJsonl:
    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.meta = self.path.with_name(self.path.name + ".meta.json")
        self.settings = settings
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"--output {self.path} is a directory")

    def done_ids(self) -> set[str]:
        if self.meta.exists():
            try:
                old = json.loads(self.meta.read_text())
            except ValueError:
                raise UserError(f"{self.meta}: malformed; delete it with its output to start over") from None
            if old != self.settings:
                diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
                raise UserError(f"{self.path} was written with other settings ({', '.join(diff)}); "
                                "use a new --output or delete the old one")
        elif self.path.exists() or self.partial.exists():
            raise UserError(f"{self.path} exists but was not written by `pilot wsd generate` (no {self.meta.name})")
        done = set()  # a prompt the server refused is not done: a rerun asks again (its answer then follows)
        if self.path.exists():
            done |= {str(r["id"]) for r in _read_records(self.path, tolerate_torn_tail=False) if "error" not in r}
        if self.partial.exists():
            done |= {str(r["id"]) for r in _read_records(self.partial, tolerate_torn_tail=True) if "error" not in r}
        return done

    def __enter__(self) -> "ResumableJsonl":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.meta, self.settings)
        if self.path.exists():  # new prompts for a finished file: reopen it as unfinished
            with open(self.path, "rb") as src, open(self.partial, "ab") as dst:
                dst.write(src.read())
                dst.flush()
                os.fsync(dst.fileno())
            self.path.unlink()
        self._f = open(self.partial, "a", encoding="utf-8")
        return self

    def write(self, records: list[MethodRecord]) -> None:
        self._f.write("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())

    def finish(self, order: list[str] | None = None) -> None:
        """Close and publish the file; with `order` (the prompts' ids), its records in that order (a rolling window
        finishes them in any order; a retried id's records keep theirs, the last one read wins)."""
        self._f.close()
        if order is not None:
            rank = {str(i): n for n, i in enumerate(order)}
            recs = sorted(_read_records(self.partial, tolerate_torn_tail=True),
                          key=lambda r: rank.get(str(r["id"]), len(rank)))
            tmp = self.partial.with_name(self.partial.name + ".sorted")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.partial)
        os.replace(self.partial, self.path)

    def __exit__(self, *exc) -> None:
        if not self._f.closed:
            self._f.close()
