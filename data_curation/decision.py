"""Why a row left the dataset: every check that drops a row (load, filter, dedup, decontamination, mix, review)
returns a `Drop`, and every dropped row lands in `excluded` with its fields as columns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Drop:
    stage: str  # load, filter, dedup, decontamination, mix, review
    reason: str  # e.g. too_long, near_duplicate, contaminated_overlap
    score: float | None = None  # what the check measured (a length, a similarity, an overlap share)
    matched: str | None = None  # the row or reference prompt it duplicates or contains
    detail: str | None = None  # anything else a reviewer needs (a parse error, who rejected it and why)

    def columns(self) -> dict:
        return asdict(self)


DROP_COLUMNS = tuple(f.name for f in fields(Drop))
ROW_KEYS = ("id", "source", "source_id", "row")  # which row it was, and where it came from
EXCLUDED_KEYS = ROW_KEYS + DROP_COLUMNS  # the columns every excluded row has
