"""Rows of a Hugging Face dataset, streamed, at a pinned revision: the `hf` source.

A hub dataset is read at `hf_revision` (a commit sha, a tag or a branch; '' = the newest). The revision is resolved to
its commit sha before any row is read, the rows are streamed at that very commit and the sha goes to info.json, so
dvc.lock pins what was read and a later run that reads another commit shows up as a change. `hf_path` may also be a
local folder (`save_to_disk` output, or parquet / jsonl files): then the sha256 of its files is recorded instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llm_core.config import SourceConfig
from llm_core.data.sources.schema import DataError, key
from llm_core.files import describe_files


def resolve_revision(path: str, revision: str, kind: str) -> str:
    """The commit sha of `revision` ('' = the newest) of hub dataset `path`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().dataset_info(path, revision=revision or None).sha
    except RevisionNotFoundError:
        raise DataError(f"the Hugging Face dataset {path!r} has no revision {revision!r}; set "
                        f"{key(kind, 'hf_revision')} to one of its commit shas or tags ('' = the newest)") from None
    except RepositoryNotFoundError:
        raise DataError(f"no dataset {path!r} on the Hugging Face hub (or it is private); check "
                        f"{key(kind, 'hf_path')}") from None
    except Exception as e:  # noqa: BLE001 - the hub client raises its HTTP library's own errors when offline
        raise DataError(f"cannot reach the Hugging Face hub for {path!r} ({type(e).__name__}: {e}): "
                        "data.source=hf needs a network (or an existing local dataset folder as hf_path); use "
                        "data.source=synthetic or local") from None


def hub_rows(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    """Raw rows of the configured split; `stats` gets the revision read (hub) or the files' checksums (folder)."""
    import datasets  # heavy import: only for this source

    local = Path(src.hf_path)
    try:
        if local.exists():
            if src.hf_revision:
                raise DataError(f"{key(kind, 'hf_revision')} is {src.hf_revision!r} but {key(kind, 'hf_path')} is "
                                f"the local folder {src.hf_path}, which has no revisions; set "
                                f"{key(kind, 'hf_revision')}: ''")
            stats["inputs"] = describe_files(sorted(p for p in local.rglob("*") if p.is_file()))
            if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
                ds = datasets.load_from_disk(src.hf_path)
                if isinstance(ds, datasets.DatasetDict):
                    if src.hf_split not in ds:
                        raise DataError(f"{src.hf_path} has no split {src.hf_split!r} (splits: {list(ds)}); set "
                                        f"{key(kind, 'hf_split')}")
                    ds = ds[src.hf_split]
            else:
                ds = datasets.load_dataset(src.hf_path, src.hf_name or None, split=src.hf_split, streaming=True)
        else:
            stats["revision"] = resolve_revision(src.hf_path, src.hf_revision, kind)
            ds = datasets.load_dataset(src.hf_path, src.hf_name or None, split=src.hf_split, streaming=True,
                                       revision=stats["revision"])
        rows = iter(ds)
    except DataError:
        raise
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"cannot load {src.hf_path!r} from the Hugging Face hub ({type(e).__name__}: {e}): "
                        "data.source=hf needs a network (or an existing local dataset folder as hf_path); use "
                        "data.source=synthetic or local") from None
    except ValueError as e:  # an unknown split or config
        raise DataError(f"cannot load {src.hf_path!r}: {e}; check {key(kind, 'hf_name')} and "
                        f"{key(kind, 'hf_split')}") from None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except (ConnectionError, OSError) as e:
            raise DataError(f"streaming {src.hf_path!r} failed ({type(e).__name__}: {e}): data.source=hf needs a "
                            "network; rerun, or use data.source=synthetic or local") from None
        yield row
