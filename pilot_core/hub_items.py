"""The hub items a config names: every model, tokenizer, dataset and dataset file it reads from the Hugging Face
Hub, with the revision it asks for. Each config type that names one says so once, in its `hub_refs()` (the rules
below: `model_refs` for ModelSource, `dataset_refs` for HubData and curation sources of kind hf; best-of-N's reward
model in its own config). `hub_items` walks a validated config and collects them with their keys: `pilot config
check` lists them, `pilot fetch` resolves and downloads them, and the loader pins them to the lock beside the
recipe (pilot_core/lock.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from pilot_core.models.files import is_local

COMMIT = re.compile(r"[0-9a-f]{40}")  # a pinned revision; a branch or tag name moves
BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets' file builders: their data_files are read
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class HubRef:
    """One hub item of a config object."""

    what: str  # "model", "tokenizer" (only a model's tokenizer files are read), "dataset", "file" (one hf:// URL)
    kind: str  # the hub's repository type: "model", "dataset" or "space"
    repo: str
    revision: str | None  # as the config asks (None: the default branch)
    field: str  # the object's field that names it ("path", "tokenizer", "reward_model", "data_files")
    revision_field: str | None = None  # the field a pinned commit is written to; None for a URL: its @revision
    at: tuple = ()  # a URL: where it sits inside the field (list index, dict key)
    file: str | None = None  # a URL: the file (or glob) inside the repository
    url: str | None = None

    @property
    def key(self) -> str:
        return ".".join([self.field, *map(str, self.at)])

    @property
    def requested(self) -> str:
        return self.revision or DEFAULT_REVISION

    @property
    def pinned(self) -> bool:
        return bool(self.revision and COMMIT.fullmatch(self.revision))

    @property
    def name(self) -> str:
        """How a person names it: `repo@revision`, or the URL."""
        return self.url or f"{self.repo}@{self.requested}"


# ----------------------------------------------------------------------------------------------------- the rules
def hub_model(name: str | None, revision: str | None, field: str, revision_field: str,
              what: str = "model") -> list[HubRef]:
    """A model named by a local path or a hub id: a hub item when a hub id."""
    return [HubRef(what, "model", name, revision, field, revision_field)] if name and not is_local(name) else []


def model_refs(m) -> list[HubRef]:
    """A ModelSource: its `path` when a hub id; a served model's `tokenizer` when a hub id (only the tokenizer is
    read here). Both at `revision`."""
    if m.path:
        return hub_model(m.path, m.revision, "path", "revision")
    return hub_model(m.tokenizer, m.revision, "tokenizer", "revision", "tokenizer") if m.url else []


def parse_hf_url(url: str) -> tuple[str, str, str | None, str]:
    """hf://[datasets/|spaces/]<owner>/<name>[@<revision>]/<file> -> (kind, repo, revision, file)."""
    parts = url.removeprefix("hf://").split("/")
    kind = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model")
    if kind != "model":
        parts = parts[1:]
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return kind, "/".join(parts), None, ""
    name, _, rev = parts[1].partition("@")
    return kind, f"{parts[0]}/{name}", rev or None, "/".join(parts[2:])


def with_revision(url: str, revision: str) -> str:
    """The same hf:// URL at another revision."""
    kind, repo, _, file = parse_hf_url(url)
    prefix = {"dataset": "datasets/", "space": "spaces/"}.get(kind, "")
    return f"hf://{prefix}{repo}@{revision}/{file}"


def _urls(files, at: tuple = ()) -> Iterator[tuple[tuple, str]]:
    if isinstance(files, dict):
        for k, v in files.items():
            yield from _urls(v, (*at, k))
    elif isinstance(files, list):
        for i, v in enumerate(files):
            yield from _urls(v, (*at, i))
    elif isinstance(files, str) and files.startswith("hf://"):
        yield at, files


def dataset_refs(d) -> list[HubRef]:
    """A dataset read as the hub publishes it (HubData, a curation source of kind hf): its `path` when a hub id, at
    `revision`; with a file builder (json, csv, parquet...), each hf:// URL of its `data_files`, at the URL's own
    @revision."""
    if d.path in BUILDERS:
        out = []
        for at, url in _urls(d.data_files):
            kind, repo, rev, file = parse_hf_url(url)
            out.append(HubRef("file", kind, repo, rev, "data_files", None, at, file, url))
        return out
    if is_local(d.path):
        return []
    return [HubRef("dataset", "dataset", d.path, d.revision, "path", "revision")]


# ----------------------------------------------------------------------------------------------------- the walk
@dataclass(frozen=True)
class HubItem:
    """A hub item where a config names it: `key` is its place in the config (`pilot.path`), `owner` the object
    whose field names it (pinning writes there)."""

    key: str
    ref: HubRef
    owner: Any = field(compare=False, repr=False)


def refs_of(obj) -> list[HubRef]:
    """The hub items one config object names itself (not those of the objects inside it)."""
    refs = getattr(obj, "hub_refs", None)
    return refs() if isinstance(obj, BaseModel) and callable(refs) else []


def _sub(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def hub_items(obj, key: str = "") -> list[HubItem]:
    """Every hub item of a validated config, in the order of its keys."""
    out = [HubItem(_sub(key, r.key), r, obj) for r in refs_of(obj)]
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            out += hub_items(getattr(obj, name), _sub(key, name))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += hub_items(v, f"{key}.{i}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += hub_items(v, f"{key}.{k}")
    return out


def _replace(files, at: tuple, value: str):
    if not at:
        return value
    head, rest = at[0], at[1:]
    if isinstance(files, dict):
        return {**files, head: _replace(files[head], rest, value)}
    return [_replace(v, rest, value) if i == head else v for i, v in enumerate(files)]


def pin(item: HubItem, commit: str) -> None:
    """Make the config read `item` at `commit`: its revision field, or the @revision of its URL."""
    r, owner = item.ref, item.owner
    if r.revision_field:
        setattr(owner, r.revision_field, commit)
    else:
        current = getattr(owner, r.field)
        url = current
        for part in r.at:
            url = url[part]
        setattr(owner, r.field, _replace(current, r.at, with_revision(url, commit)))


# ----------------------------------------------------------------------------------------------------- read back
def pinned_in(dump: Any) -> dict[str, str]:
    """repo -> commit for every hub item pinned to a commit in a config as written to JSON (a manifest's or a
    report's `config`): a mapping whose `revision` (or `<field>_revision`) is a commit names its repository in
    `path` or `tokenizer` (or `<field>`); an hf:// URL carries its own. What the rules above pinned, read back."""
    out: dict[str, str] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(k, str) and k.endswith("revision") and isinstance(v, str) and COMMIT.fullmatch(v):
                    prefix = k.removesuffix("revision").rstrip("_")
                    repo = x.get(prefix) if prefix else (x.get("path") or x.get("tokenizer"))
                    if isinstance(repo, str):
                        out[repo] = v
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and x.startswith("hf://"):
            _, repo, rev, _ = parse_hf_url(x)
            if rev and COMMIT.fullmatch(rev):
                out[repo] = rev

    walk(dump)
    return dict(sorted(out.items()))
