"""Datasets -> parquet shards: the built-in world, local files, a URL or the Hugging Face hub.

Four dataset kinds share the code path: `pretrain` (column `text`), `sft` (column `messages`, a list of
{role, content}), `hellaswag` (the official jsonl schema) and `probe` (HellaSwag items of the in-training curve, kept
apart from the evaluation items). One job per module:

    schema    what a record of each kind is; raw rows -> records (skips counted)
    text      decoding files into text, streamed (the offset of a bad byte), cutting text into documents
    fetch     fetching a URL over HTTP(S), resumable, checked against a sha256
    hub       streaming a Hugging Face dataset at a pinned revision
    records   the records of one configured source, with what was read (checksums, revision) for info.json
    parquet   writing a dataset's shards + info.json (swapped in whole), and reading them back

The names below are the package's interface; callers never need the module that holds them.
"""

from llm_core.data.sources.fetch import fetch_url
from llm_core.data.sources.parquet import (ShardWriter, dataset_info, is_val, iter_texts, read_dataset, split_files,
                                           take_bytes, write_dataset)
from llm_core.data.sources.records import expand_paths, iter_records, read_file
from llm_core.data.sources.schema import HELLASWAG_KINDS, KINDS, DataError
from llm_core.data.sources.text import chunk_lines, chunk_text, decode

__all__ = ["HELLASWAG_KINDS", "KINDS", "DataError", "ShardWriter", "chunk_lines", "chunk_text", "dataset_info",
           "decode", "expand_paths", "fetch_url", "is_val", "iter_records", "iter_texts", "read_dataset", "read_file",
           "split_files", "take_bytes", "write_dataset"]
