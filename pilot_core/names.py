"""Names that become paths (run names, model names, versions) are validated before they touch the disk."""

from __future__ import annotations

import re
from pathlib import Path

from pilot_core.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is one safe path component, else raise a UserError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.match(name) or name in {".", ".."} or ".." in name:
        raise UserError(
            f"invalid {what} {name!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, "
            "and no '..'"
        )
    return name


def config_name(what: str):
    """A pydantic field validator for a name that becomes a path (None passes): the error names the field."""

    def check(cls, v):
        if v is None:
            return v
        try:
            return validate_name(v, what)
        except UserError as e:  # pydantic reports a ValueError with the key's location
            raise ValueError(str(e)) from None

    return classmethod(check)


def check_unique(names: list[str], what: str) -> None:
    """A ValueError (for a pydantic validator) naming the repeated names, if any."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")


def safe_join(root: Path, *names: str, what: str = "name") -> Path:
    """Join validated names under `root`; the result is guaranteed to stay inside `root`."""
    path = Path(root)
    for n in names:
        path = path / validate_name(n, what)
    return path
