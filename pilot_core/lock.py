"""The lock beside a recipe (`configs/pipeline/pilot-3b.yaml` -> `configs/pipeline/pilot-3b.lock.json`): every hub
item the recipe names (pilot_core/hub_items.py), with the revision it asks for, the commit that revision resolved
to when `pilot fetch` ran, and the sha256 and size of each file fetched. `fetch` writes it; `apply_lock` (called by
the config loader) makes a run read every hub item at its locked commit, so a moving `main` cannot change a run
after the fact; what fetch downloaded is read from the hub cache, offline too (`cached_snapshot`; for datasets the
rule of pilot_core/hub_data.py). A lock that no longer matches its recipe (an item added, a revision changed) is
one error: fetch again. The token is read from HF_TOKEN only, and written nowhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from pilot_core.atomic import atomic_write_json
from pilot_core.errors import JobFailed, UserError
from pilot_core.hub_items import COMMIT, HubItem, HubRef, hub_items, pin
from pilot_core.manifest import file_sha256

SUFFIX = ".lock.json"
# what a tokenizer reads (tokenizer.json, tokenizer_config.json, special tokens, vocabularies, sentencepiece models,
# chat templates, config.json for the model type): a served base's tokenizer, without its weights
TOKENIZER_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


class LockedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    size: int


class LockEntry(BaseModel):
    """One repository at one requested revision (several keys of a recipe may name it)."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # the hub's repository type: model, dataset, space
    repo: str
    revision: str  # as the recipe asks
    sha: str  # the commit it resolved to
    patterns: list[str] | None  # the files fetched (None: the whole repository)
    files: dict[str, LockedFile]
    keys: list[str]  # where the recipe names it, when locked

    def covers(self, ref: HubRef) -> bool:
        if self.patterns is None:
            return True
        if ref.what in ("model", "dataset"):
            return False
        return set(TOKENIZER_FILES if ref.what == "tokenizer" else [ref.file]) <= set(self.patterns)


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str  # the recipe's file name
    endpoint: str  # the hub it was fetched from
    items: list[LockEntry]

    def find(self, ref: HubRef) -> LockEntry | None:
        for e in self.items:
            if (e.kind, e.repo, e.revision) == (ref.kind, ref.repo, ref.requested) and e.covers(ref):
                return e
        return None


def lock_path(recipe: str | Path) -> Path:
    """Where the lock of a recipe lives: beside it, `<stem>.lock.json`."""
    p = Path(recipe)
    return p.with_name(p.stem + SUFFIX)


def read_lock(path: str | Path) -> Lock:
    try:
        return Lock.model_validate_json(Path(path).read_bytes())
    except (ValidationError, ValueError) as e:
        raise UserError(f"{path}: malformed lock file ({str(e).splitlines()[0]}): run `pilot fetch` again") from None


# ----------------------------------------------------------------------------------------------------- runs
def apply_lock(cfg: BaseModel, recipe: str | Path) -> list[tuple[HubItem, LockEntry]]:
    """Pin every hub item of a loaded recipe to the commit its lock holds, in place; [] when there is no lock
    beside the recipe. An item the lock does not hold (added, or its revision changed since) is a UserError."""
    path = lock_path(recipe)
    if not path.is_file():
        return []
    lock = read_lock(path)
    items = hub_items(cfg)
    found = [(item, lock.find(item.ref)) for item in items]
    stale = [item for item, entry in found if entry is None]
    if stale:
        s = stale[0]
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise UserError(f"{path} does not match {recipe}: {s.key}: {s.ref.name} is not locked (added, or its "
                        f"revision changed since the lock was written){more}: run `pilot fetch --config {recipe}` "
                        "again")
    pinned = [(item, entry) for item, entry in found if entry is not None]
    for item, entry in pinned:
        pin(item, entry.sha)
    return pinned


def cached_snapshot(kind: str, repo: str, commit: str, patterns: list[str] | None = None) -> Path | None:
    """The folder of `repo` at `commit` in this machine's hub cache (`snapshots/<commit>`) when it holds every file
    of the commit (those matching `patterns`), else None; no network. huggingface_hub's own listing of the commit
    (`trees/<commit>.json`, written by the snapshot_download `pilot fetch` runs) says which files those are: without
    it a folder that holds some of them (what a single file download leaves) cannot be told from a whole one, so
    it counts as not cached."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError

    try:
        get_cached_repo_tree(repo, repo_type=kind, revision=commit)
        return Path(snapshot_download(repo, repo_type=kind, revision=commit, allow_patterns=patterns,
                                      local_files_only=True))
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError):  # IncompleteSnapshotError is one
        return None


def cached(entry: LockEntry) -> bool:
    """Whether every file of a locked item is in this machine's hub cache at its commit, as runs read it."""
    from huggingface_hub import try_to_load_from_cache

    return cached_snapshot(entry.kind, entry.repo, entry.sha, entry.patterns) is not None and all(
        isinstance(try_to_load_from_cache(entry.repo, f, revision=entry.sha, repo_type=entry.kind), str)
        for f in entry.files)


# ----------------------------------------------------------------------------------------------------- fetch
def _groups(items: list[HubItem]) -> dict[tuple[str, str, str], list[HubItem]]:
    out: dict[tuple[str, str, str], list[HubItem]] = {}
    for item in items:
        r = item.ref
        out.setdefault((r.kind, r.repo, r.requested), []).append(item)
    return out


def _patterns(group: list[HubItem]) -> list[str] | None:
    if any(i.ref.what in ("model", "dataset") for i in group):
        return None
    out: list[str] = []
    for i in group:
        out += TOKENIZER_FILES if i.ref.what == "tokenizer" else [i.ref.file or ""]
    return sorted(set(out))


def _resolve(kind: str, repo: str, revision: str, token) -> tuple[str, list[str] | None]:
    """The commit a revision names now, and the repository's files there (None: the hub did not list them)."""
    from huggingface_hub import HfApi

    info = HfApi(token=token).repo_info(repo, repo_type=kind, revision=revision)
    if not info.sha or not COMMIT.fullmatch(info.sha):
        raise JobFailed(f"the hub answered no commit for {kind} {repo}@{revision}")
    return info.sha, None if info.siblings is None else [s.rfilename for s in info.siblings]


def _hub_errors(where: str, rev: str, step: Callable):
    """`step()`, with the hub's answers said as bad input (exit 2) or a failed job (exit 1), in one line."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return step()
    except RevisionNotFoundError:
        raise UserError(f"{where}: the hub has no revision {rev!r}") from None
    except GatedRepoError:
        raise UserError(f"{where}: a gated repository: accept its terms on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"{where}: no such repository (or a private one: set HF_TOKEN)") from None
    except (UserError, JobFailed):
        raise
    except Exception as e:  # the hub unreachable, a 5xx, a broken download
        raise JobFailed(f"{where}: fetch failed: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def fetch(cfg: BaseModel, recipe: str | Path, out: str | Path | None = None,
          echo: Callable[[str], None] = print) -> Path | None:
    """Resolve every hub item of `cfg` (loaded from `recipe` without its lock) to a commit, download it into the
    hub cache at that commit, checksum what was downloaded and write the lock (atomically). None when the recipe
    names no hub item (nothing is written). Every revision is resolved, and every named file looked up, before
    anything is downloaded: bad input is found before the work starts."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    items = hub_items(cfg)
    if not items:
        return None
    groups = _groups(items)
    if constants.is_offline_mode():
        names = ", ".join(f"{kind} {repo}@{rev}" for kind, repo, rev in groups)
        raise UserError(f"{recipe}: offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): cannot resolve or "
                        f"download its {len(groups)} hub item(s) ({names}); run `pilot fetch` where the hub is "
                        "reachable")
    token = os.environ.get("HF_TOKEN") or False  # the environment only: never a token file, never written
    resolved = {}
    for (kind, repo, rev), group in groups.items():
        where = f"{recipe}: {group[0].key}: {kind} {repo}@{rev}"
        sha, names = _hub_errors(where, rev, lambda: _resolve(kind, repo, rev, token))
        for i in group:
            if i.ref.what == "file" and names is not None and not list(filter_repo_objects(names, allow_patterns=[
                    i.ref.file])):
                raise UserError(f"{recipe}: {i.key}: {repo} has no file {i.ref.file!r} at {rev} ({sha})")
        resolved[(kind, repo, rev)] = sha
    entries = []
    for (kind, repo, rev), group in groups.items():
        sha, patterns = resolved[(kind, repo, rev)], _patterns(group)
        folder = Path(_hub_errors(f"{recipe}: {group[0].key}: {kind} {repo}@{rev}", rev, lambda: snapshot_download(
            repo, repo_type=kind, revision=sha, allow_patterns=patterns, token=token)))
        if cached_snapshot(kind, repo, sha, patterns) != folder:  # what runs (offline too) read: pilot_core/hub_data
            raise JobFailed(f"{recipe}: {group[0].key}: {kind} {repo}@{rev}: fetch failed: the hub cache holds no "
                            f"complete listing of {sha} after the download")
        paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        paths = list(filter_repo_objects(paths, allow_patterns=patterns))
        files = {p: LockedFile(sha256=file_sha256(folder / p), size=(folder / p).stat().st_size) for p in paths}
        entries.append(LockEntry(kind=kind, repo=repo, revision=rev, sha=sha, patterns=patterns, files=files,
                                 keys=[i.key for i in group]))
        echo(f"locked {kind} {repo}@{rev} -> {sha} ({len(files)} files, "
             f"{sum(f.size for f in files.values())} bytes)")
    path = Path(out) if out else lock_path(recipe)
    lock = Lock(recipe=Path(recipe).name, endpoint=constants.ENDPOINT, items=entries)
    atomic_write_json(path, lock.model_dump(mode="json"))
    return path
