"""Reading files a user hands us: one clear UserError for a missing, unreadable or non-UTF-8 file."""

from __future__ import annotations

from pathlib import Path

from pilot_core.errors import UserError


def read_text(path: str | Path, what: str = "file") -> str:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} is not a file: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
