"""Many reviewers of one review, shared by the prompt review and the pair review.

An export can be split into per-reviewer shares, each with the same overlap rows (every reviewer decides them:
that is where agreement is measured). Every import appends the reviewer's decisions to the directory's review
state: a per-row history of who decided what, when and why (`<prefix>review_history.parquet`), and a snapshot of
each decided row as it was before the review touched it (`<prefix>review_base.parquet`). What a row becomes is
computed from that state alone, so imports accumulate in any order:

- a reviewer's latest decision on a row is theirs (importing the same decisions again adds nothing);
- a row applies the decision every reviewer who decided it agrees on;
- reviewers deciding a row differently is a conflict: the row stays as it was before the review until an
  adjudicator decides it; an adjudicator's latest decision wins over the reviewers' and is recorded with theirs.

Agreement is Cohen's kappa over the rows two reviewers both decided (the overlap).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from itertools import combinations
from pathlib import Path

from pilot_core.errors import UserError

REVIEWER, ADJUDICATOR = "reviewer", "adjudicator"
NAME = re.compile(r"[\w.@+-]+( [\w.@+-]+)*")  # no commas or slashes: names are joined with ", " and name folders


def check_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise UserError(f"{what} {name!r}: give a name of letters, digits, spaces or . _ @ + -")
    return name


@dataclass(frozen=True)
class Event:
    """One decision in a row's history."""

    id: str
    reviewer: str
    role: str  # reviewer, or adjudicator (whose decision wins)
    decision: str
    note: str
    judge_wrong: bool  # the pair review's flag (False in the prompt review)
    at: str
    export: str  # the export the decided row came from
    source: str  # the decisions file (name and fingerprint) or the adjudicate command


HISTORY_FIELDS = tuple(f.name for f in fields(Event))


@dataclass(frozen=True)
class Settled:
    """What applies to a row: a decision, or None while reviewers disagree and no adjudicator has decided."""

    decision: str | None
    by: tuple[Event, ...]  # the agreeing reviewers' decisions, or the adjudicator's
    votes: dict[str, str]  # each reviewer's latest decision (the conflict, or what an adjudicator settled)

    @property
    def who(self) -> str:
        return ", ".join(e.reviewer + (" (adjudicator)" if e.role == ADJUDICATOR else "") for e in self.by)

    @property
    def at(self) -> str:
        return max((e.at for e in self.by), default="")

    @property
    def note(self) -> str:
        return "; ".join(e.note for e in self.by if e.note)

    @property
    def judge_wrong(self) -> bool:
        return any(e.judge_wrong for e in self.by)

    def detail(self) -> str:
        """Who decided it and why, e.g. `alice: off-topic; bob`."""
        return "; ".join(f"{e.reviewer}{' (adjudicator)' if e.role == ADJUDICATOR else ''}: {e.note}".rstrip(": ")
                         for e in self.by)


@dataclass
class ReviewState:
    """A directory's review state: the history, the rows as they were before the review, the exports whose
    files accumulate, and the version of the reviewed table the last import wrote (anything else changing it
    makes every earlier export stale)."""

    prefix: str  # "" (prompt review) or "pair_"
    history: list[Event]
    base: dict[str, dict[str, dict]]  # id -> {table name: row as it was before the review}
    exports: list[str]
    written: str | None

    @property
    def key(self) -> str:
        return f"{self.prefix}review_state"

    @classmethod
    def load(cls, directory: Path, prefix: str, data: dict) -> ReviewState:
        import pyarrow.parquet as pq

        meta = data.get(f"{prefix}review_state") or {}
        history, base = [], {}
        if (directory / f"{prefix}review_history.parquet").is_file():
            history = [Event(**r) for r in pq.read_table(directory / f"{prefix}review_history.parquet").to_pylist()]
        if (directory / f"{prefix}review_base.parquet").is_file():
            for r in pq.read_table(directory / f"{prefix}review_base.parquet").to_pylist():
                base.setdefault(r["id"], {})[r["table"]] = json.loads(r["row"])
        return cls(prefix, history, base, list(meta.get("exports", [])), meta.get("written"))

    def tables(self) -> dict:
        """The state as the tables written beside the splits."""
        import pyarrow as pa

        history = pa.Table.from_pylist([asdict(e) for e in self.history], schema=pa.schema(
            [(f, pa.bool_() if f == "judge_wrong" else pa.string()) for f in HISTORY_FIELDS]))
        cells = [(i, t, json.dumps(self.base[i][t], ensure_ascii=False, sort_keys=True))
                 for i in sorted(self.base) for t in sorted(self.base[i])]
        base = pa.table({k: pa.array([c[n] for c in cells], pa.string()) for n, k in enumerate(("id", "table", "row"))})
        return {f"{self.prefix}review_history": history, f"{self.prefix}review_base": base}


@contextlib.contextmanager
def _serialised(directory: Path):
    # not beside the directory (a refused import must leave the user's files as they were) but in this machine's
    # temp dir, one file per directory, never removed (a removed lock file could be locked twice)
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:24]
    locks = Path(tempfile.gettempdir()) / "pilot-review-locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def one_at_a_time(fn):
    """Imports into one directory run one after another: two reviewers importing at once would each rewrite the
    directory from what it held before, and the first one's decisions would be lost."""
    @functools.wraps(fn)
    def run(dataset, *args, **kwargs):
        if not Path(dataset).is_dir():  # nothing to guard: the import says what is wrong
            return fn(dataset, *args, **kwargs)
        with _serialised(Path(dataset)):
            return fn(dataset, *args, **kwargs)
    return run


def table_version(table) -> str:
    """A table's content (rows in order), however parquet laid it out: what `written` compares."""
    h = hashlib.sha256()
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


def accepted_exports(state: ReviewState, table) -> frozenset[str]:
    """Earlier exports whose files still import: those of this state while only review imports changed the table."""
    return frozenset(state.exports) if state.exports and state.written == table_version(table) else frozenset()


def who(path: Path, rows: list[dict], reviewer: str | None, adjudicator: str | None) -> tuple[str, str]:
    """(name, role) of an import: an adjudicator as given; else the reviewer the share names (its `reviewer`
    column), --reviewer, or the current user. --reviewer naming someone else than the share is an error."""
    if reviewer and adjudicator:
        raise UserError("--reviewer and --adjudicator: give one (an adjudicator's decisions win over the reviewers')")
    if adjudicator:
        return check_name(adjudicator, "--adjudicator"), ADJUDICATOR
    given, named = (reviewer or "").strip(), ""
    for r in rows:
        if not r.get("reviewer"):
            continue
        if given and r["reviewer"] != given:
            raise UserError(f"{path}:{r['line']}: this row is {r['reviewer']}'s share, not {given}'s: import it "
                            f"with --reviewer {r['reviewer']} (or leave --reviewer out)")
        if named and r["reviewer"] != named:
            raise UserError(f"{path}:{r['line']}: a row of {r['reviewer']}'s share in {named}'s file: import each "
                            "reviewer's file on its own")
        named = r["reviewer"]
    return check_name(given or named or getpass.getuser(), "reviewer"), REVIEWER


def new_events(history: list[Event], rows: list[dict], name: str, role: str, at: str, source: str) -> list[Event]:
    """The decided rows of a file as events, leaving out what this person's latest decision on the row already
    says (the same decisions again add nothing)."""
    latest = {(e.id, e.reviewer, e.role): e for e in history}
    out = []
    for r in rows:
        if not r["decision"]:
            continue
        e = Event(r["id"], name, role, r["decision"], r["note"], bool(r.get("judge_wrong")), at, r["export"], source)
        last = latest.get((e.id, name, role))
        if last is None or (last.decision, last.note, last.judge_wrong) != (e.decision, e.note, e.judge_wrong):
            out.append(e)
    return out


def settle(history: list[Event]) -> dict[str, Settled]:
    """The decision that applies to each row of the history (see the module's rules)."""
    latest: dict[str, dict[tuple[str, str], tuple[int, Event]]] = {}
    for n, e in enumerate(history):  # in order: a later decision of the same person replaces theirs
        latest.setdefault(e.id, {})[(e.reviewer, e.role)] = (n, e)
    out = {}
    for rid, people in latest.items():
        by = {k: e for k, (_, e) in people.items()}
        votes = {e.reviewer: e.decision for (_, role), e in sorted(by.items()) if role == REVIEWER}
        judges = sorted((n, e) for (_, role), (n, e) in people.items() if role == ADJUDICATOR)
        if judges:  # the latest adjudicator's decision wins
            out[rid] = Settled(judges[-1][1].decision, (judges[-1][1],), votes)
        elif len(set(votes.values())) == 1:
            out[rid] = Settled(next(iter(votes.values())), tuple(e for _, e in sorted(by.items())), votes)
        else:
            out[rid] = Settled(None, (), votes)
    return out


def conflicts(settled: dict[str, Settled]) -> list[dict]:
    """Rows the reviewers decided differently and no adjudicator has settled: [{id, votes}]."""
    return [{"id": i, "votes": s.votes} for i, s in sorted(settled.items()) if s.decision is None]


def adjudicated(settled: dict[str, Settled]) -> list[dict]:
    return [{"id": i, "decision": s.decision, "by": s.by[0].reviewer, "note": s.note, "votes": s.votes}
            for i, s in sorted(settled.items()) if s.by and s.by[0].role == ADJUDICATOR]


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e), p_o the share of items
    they agree on, p_e the agreement expected from each rater's label shares. None where it is undefined (no
    items, or both raters used one and the same label: p_e = 1)."""
    if len(a) != len(b):
        raise ValueError("two raters' labels of the same items")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum(a.count(label) * b.count(label) for label in set(a) | set(b)) / (n * n)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def agreement(history: list[Event]) -> list[dict]:
    """Per pair of reviewers: the rows both decided, how many they decided alike, and Cohen's kappa."""
    votes = {i: s.votes for i, s in settle(history).items()}
    names = sorted({n for v in votes.values() for n in v})
    out = []
    for x, y in combinations(names, 2):
        both = sorted(i for i, v in votes.items() if x in v and y in v)
        a, b = [votes[i][x] for i in both], [votes[i][y] for i in both]
        if both:
            k = cohen_kappa(a, b)
            out.append({"reviewers": [x, y], "rows": len(both), "agreed": sum(p == q for p, q in zip(a, b)),
                        "kappa": None if k is None else round(k, 4)})
    return out


def split_shares(rows: list[dict], reviewers: tuple[str, ...], overlap: int, seed: int, stratum) -> dict:
    """{reviewer: rows}: `overlap` rows every reviewer gets, the rest dealt out in turn; the overlap and each
    share spread over the strata (seeded), each share in the export's order with its reviewer's name."""
    names = [check_name(n, "--reviewers:") for n in reviewers]
    if len(set(names)) != len(names):
        raise UserError(f"--reviewers {','.join(names)}: a reviewer named twice")
    if not 0 <= overlap <= len(rows):
        raise UserError(f"--overlap {overlap}: between 0 and the {len(rows)} rows sampled")
    groups: dict = {}
    for n, r in enumerate(rows):
        groups.setdefault(str(stratum(r)), []).append(n)
    for g in groups.values():
        g.sort(key=lambda n: hashlib.sha256(f"{seed}:share:{rows[n]['id']}".encode()).digest())
    turn = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:stratum:{g}".encode()).digest())
    spread = [groups[g][k] for k in range(max(map(len, groups.values()), default=0)) for g in turn
              if k < len(groups[g])]  # one of each stratum in turn (strata in a seeded order)
    common, rest = set(spread[:overlap]), spread[overlap:]
    return {name: [{**rows[n], "reviewer": name} for n in sorted(common | set(rest[k::len(names)]))]
            for k, name in enumerate(names)}


def card_section(kind: str, state: ReviewState, settled: dict[str, Settled]) -> str:
    """The data card's account of the reviewers: agreement, open conflicts, adjudications (rewritten on every
    import, between markers)."""
    agree, open_, judged = agreement(state.history), conflicts(settled), adjudicated(settled)
    people = sorted({e.reviewer for e in state.history if e.role == REVIEWER})
    lines = [f"<!-- {kind}-reviewers -->", f"## Reviewers ({kind})", "",
             f"{len(people)} reviewer(s) ({', '.join(people)}) decided {len(settled)} rows; every decision, with "
             f"who, when and note, is in `{state.prefix}review_history.parquet`. A row takes the decision all its "
             "reviewers agree on, or an adjudicator's.", ""]
    if agree:
        lines += ["Agreement on the rows two reviewers both decided (Cohen's kappa):", "",
                  "| reviewers | rows | agreed | kappa |", "|---|---:|---:|---:|"]
        lines += [f"| {' / '.join(a['reviewers'])} | {a['rows']} | {a['agreed']} | "
                  f"{'n/a' if a['kappa'] is None else format(a['kappa'], '.2f')} |" for a in agree]
        lines.append("")
    if open_:
        lines += [f"{len(open_)} conflict(s) await an adjudicator (`pilot review conflicts`; until settled these "
                  "rows stay as they were before the review):", ""]
        lines += [f"- `{c['id']}`: " + ", ".join(f"{n} {d}" for n, d in c["votes"].items()) for c in open_]
        lines.append("")
    if judged:
        lines += ["Settled by an adjudicator:", ""]
        for j in judged:
            votes = ", ".join(f"{n} {d}" for n, d in j["votes"].items())
            lines.append(f"- `{j['id']}`: {j['by']} decided {j['decision']}" + (f" ({votes})" if votes else "")
                         + (f": {j['note']}" if j["note"] else ""))
        lines.append("")
    lines.append(f"<!-- /{kind}-reviewers -->")
    return "\n".join(lines) + "\n"


def with_section(card: str, kind: str, section: str) -> str:
    """The card with its reviewers' section, the latest, at the end (an earlier one taken out)."""
    begin, end = f"<!-- {kind}-reviewers -->", f"<!-- /{kind}-reviewers -->\n"
    if begin in card and end in card:
        head, rest = card.split(begin, 1)
        card = head.rstrip("\n") + "\n" + rest.split(end, 1)[1]
    return card.rstrip("\n") + "\n\n" + section


def state_meta(state: ReviewState, settled: dict[str, Settled]) -> dict:
    """What the manifest says of the review state."""
    return {"exports": state.exports, "written": state.written, "history": f"{state.prefix}review_history.parquet",
            "rows": len(settled), "reviewers": sorted({e.reviewer for e in state.history if e.role == REVIEWER}),
            "agreement": agreement(state.history), "conflicts": conflicts(settled),
            "adjudicated": adjudicated(settled)}


def export_parts(rows: list[dict], reviewers: tuple[str, ...], overlap: int, seed: int, page) -> tuple[dict, dict]:
    """What `write_review` writes: one set of files, or one per reviewer's share (`page(rows, reviewer)` renders
    a page); and what review.json says of the shares."""
    if not reviewers:
        if overlap:
            raise UserError(f"--overlap {overlap}: give --reviewers too (the overlap is what every reviewer decides)")
        return {"": (rows, page(rows, ""))}, {}
    shares = split_shares(rows, reviewers, overlap, seed, lambda r: r["stratum"])
    common = set.intersection(*({r["id"] for r in s} for s in shares.values()))
    return ({n: (s, page(s, n)) for n, s in shares.items()},
            {"reviewers": {n: len(s) for n, s in shares.items()}, "overlap": sorted(common) if overlap else []})


def check_accumulating(path: Path, rows: list[dict], kind: str, fp: str, directory: Path, state: ReviewState,
                       table) -> None:
    """`check_export`, where files of the exports this state accumulates still import while only review imports
    changed `table` since (its content is then what the last import wrote)."""
    from data_curation.review_file import EXPORT, check_export, export_tag

    stale = any(r[EXPORT] != export_tag(kind, fp) for r in rows)
    check_export(path, rows, kind, fp, directory, accepted_exports(state, table) if stale else frozenset())


def record(state: ReviewState, rows: list[dict], name: str, role: str, at: str, source: dict) -> list[Event]:
    """Add a file's new decisions to the state (and its export to those that accumulate); the new events.
    `source`: the decisions file's name and fingerprint (None for `pilot review adjudicate`)."""
    where = (f"{source['decisions_file']} {source['decisions_fingerprint'][:16]}" if source.get("decisions_file")
             else "pilot review adjudicate")
    events = new_events(state.history, rows, name, role, at, where)
    state.history += events
    state.exports = sorted(set(state.exports) | {e.export for e in events if e.export})
    return events


def review_kind(directory: str | Path) -> tuple[str, str]:
    """(kind, state prefix) of a reviewed directory: pairs in a preferences directory, else prompts."""
    from pilot_core.manifest import read_manifest

    data = read_manifest(Path(directory), kind="dataset").data
    return ("pairs", "pair_") if "preferences" in data else ("prompts", "")


def open_conflicts(directory: str | Path) -> tuple[str, list[dict]]:
    """(kind, the conflicts awaiting an adjudicator) of a reviewed directory."""
    from pilot_core.manifest import read_manifest

    directory = Path(directory)
    kind, prefix = review_kind(directory)
    state = ReviewState.load(directory, prefix, read_manifest(directory, kind="dataset").data)
    return kind, conflicts(settle(state.history))


def adjudication(state: ReviewState, rid: str, decision: str, decisions: tuple[str, ...], note: str,
                 judge_wrong: bool = False) -> list[dict]:
    """An adjudicator's decision on one reviewed row, as the one row of a decisions file."""
    if rid not in {e.id for e in state.history}:
        raise UserError(f"--id {rid!r}: no reviewer has decided this row; adjudicate rows the reviewers decided "
                        "(see `pilot review conflicts`)")
    if decision not in decisions:
        raise UserError(f"--decision {decision!r}: use {', '.join(decisions[:-1])} or {decisions[-1]}")
    return [{"line": 0, "id": rid, "decision": decision, "note": note, "export": "", "reviewer": "", "texts": {},
             "judge_wrong": judge_wrong}]
