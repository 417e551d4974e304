"""Reading JSONL files a user hands us, one object per line. A problem names the file and the line.

`iter_jsonl` reads line by line (a source of millions of rows is never held twice) and reports a line that is
not a JSON object as a problem, for callers that record bad rows and go on (curation's sources); `read_jsonl`
turns the first problem into a UserError, for files that must be right as a whole (prompts, eval sets,
reference sets, review decisions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pilot_core.errors import UserError


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} is not a file: {path}")


def iter_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, object or None, problem or None) for every non-blank line. A line that is not valid UTF-8
    is a UserError: the file needs converting, not a row dropping."""
    path = Path(path)
    _check_file(path, what)
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid UTF-8 (byte {e.start} of the line); convert the file "
                                    "to UTF-8") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, None, f"malformed JSON: {e.msg} (column {e.colno})"
                    continue
                if isinstance(obj, dict):
                    yield n, obj, None
                else:
                    yield n, None, f"expected a JSON object, found {type(obj).__name__}"
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None


def read_jsonl(path: str | Path, what: str = "file") -> list[tuple[int, dict]]:
    """Every (line number, object) of a file that must be right as a whole: the first bad line is a UserError
    `path:line: problem`."""
    rows = []
    for n, obj, problem in iter_jsonl(path, what):
        if problem is not None:
            raise UserError(f"{path}:{n}: {problem}")
        rows.append((n, obj))
    return rows
