"""Reading a dataset the way the hub publishes it (`datasets.load_dataset`): a hub id pinned by revision, a local
directory laid out like a hub repository, a `save_to_disk` directory, or a builder (json, parquet, csv) over
`data_files`. Shared by curation sources and benchmark eval sets.

One rule for hub items at a commit (what a lock pins, pilot_core/lock.py): when this machine's hub cache holds the
commit whole (`pilot fetch` downloaded it), they are read from there, online or offline: a hub id as the local
directory of its snapshot (datasets reads a directory laid out like the repository as it reads the repository:
the card's subsets, data_dir, data_files, the splits its file names give), an hf:// URL as the snapshot's file.
Otherwise online they are read from the hub; offline it is one error naming the item and saying to fetch."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pilot_core.config import BaseConfig
from pilot_core.errors import UserError
from pilot_core.hub_items import HubRef, dataset_refs


class HubData(BaseConfig):
    path: str = Field(description="a hub dataset id, a local directory laid out like one, a `save_to_disk` "
                      "directory, or a builder (json, parquet, csv) with data_files")
    subset: str | None = Field(None, description="the dataset's configuration (the hub's subset; `name` in "
                               "datasets.load_dataset)")
    data_dir: str | None = Field(None, description="a directory inside the dataset")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(None, description="files inside the "
                                                                             "dataset, or local files for a builder")
    split: str = "test"
    revision: str | None = Field(None, description="a hub dataset: the commit to read; pin one in production")

    def hub_refs(self) -> list[HubRef]:
        return dataset_refs(self)


def _offline() -> bool:
    import datasets
    from huggingface_hub import constants

    return bool(datasets.config.HF_HUB_OFFLINE) or constants.is_offline_mode()


def _map_urls(files, local: dict[str, str]):
    """`data_files` with each hf:// URL in `local` replaced by its local path."""
    if isinstance(files, dict):
        return {k: _map_urls(v, local) for k, v in files.items()}
    if isinstance(files, list):
        return [_map_urls(v, local) for v in files]
    return local.get(files, files) if isinstance(files, str) else files


def from_hub_cache(data: HubData, what: str) -> HubData:
    """`data` reading each of its hub items that this machine's hub cache holds whole at a pinned commit from there
    (the module's rule); offline, an item it does not hold is a UserError naming it."""
    from pilot_core.lock import cached_snapshot

    local: dict[str, str] = {}
    changes: dict = {}
    offline = _offline()
    for ref in dataset_refs(data):
        whole = ref.what == "dataset"
        folder = cached_snapshot(ref.kind, ref.repo, ref.revision, None if whole else [ref.file]) \
            if ref.pinned else None
        if folder is not None:
            if whole:
                changes.update(path=str(folder), revision=None)
            else:
                local[ref.url] = str(folder / ref.file)
        elif offline and (ref.pinned or not whole):  # datasets reads no hf:// URL offline
            item = f"hub dataset {ref.repo}@{ref.requested}" if whole else ref.url
            at = "" if ref.pinned else f"; {ref.requested} moves: lock the recipe"
            raise UserError(f"{what}: {item} is not in the hub cache here (offline{at}): run `pilot fetch --config "
                            "RECIPE` for the recipe that names it, where the hub is reachable")
    if local:
        changes["data_files"] = _map_urls(data.data_files, local)
    return data.model_copy(update=changes) if changes else data


def load_split(data: HubData, what: str):
    """The `split` of the dataset as a datasets.Dataset; any failure is a UserError naming `what`."""
    import datasets

    name, p = data.path, Path(data.path)
    on_disk = (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()
    try:
        if on_disk:
            ds = datasets.load_from_disk(data.path)
        else:
            data = from_hub_cache(data, what)
            ds = datasets.load_dataset(data.path, data.subset, data_dir=data.data_dir, data_files=data.data_files,
                                       split=data.split, revision=data.revision)
    except UserError:
        raise
    except Exception as e:  # offline hub, missing dir, foreign format, unknown split
        hint = "; offline: run `pilot fetch --config RECIPE` where the hub is reachable" \
            if _offline() and dataset_refs(data) else ""
        raise UserError(f"{what}: cannot load dataset {name!r}: {str(e).splitlines()[0]}{hint}") from None
    if isinstance(ds, datasets.DatasetDict):
        if data.split not in ds:
            raise UserError(f"{what}: {name} has no split {data.split!r} (has: {', '.join(ds)})")
        ds = ds[data.split]
    return ds
