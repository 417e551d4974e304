"""Reading a dataset the way the hub publishes it (`datasets.load_dataset`): a hub id pinned by revision, a local
directory laid out like a hub repository, a `save_to_disk` directory, or a builder (json, parquet, csv) over
`data_files`. Shared by curation sources and benchmark eval sets; offline, a hub id that is not cached is one
clear error."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pilot_core.config import BaseConfig
from pilot_core.errors import UserError


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


def load_split(data: HubData, what: str):
    """The `split` of the dataset as a datasets.Dataset; any failure is a UserError naming `what`."""
    import datasets

    p = Path(data.path)
    try:
        if (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file():
            ds = datasets.load_from_disk(data.path)
        else:
            ds = datasets.load_dataset(data.path, data.subset, data_dir=data.data_dir, data_files=data.data_files,
                                       split=data.split, revision=data.revision)
    except Exception as e:  # offline hub, missing dir, foreign format, unknown split
        raise UserError(f"{what}: cannot load dataset {data.path!r}: {str(e).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if data.split not in ds:
            raise UserError(f"{what}: {data.path} has no split {data.split!r} (has: {', '.join(ds)})")
        ds = ds[data.split]
    return ds
