"""A small folder of text files for the `--smoke` runs of the data benchmarks (tokenize_speed, tokenize_memory,
tokenizer_train), which otherwise read a folder of real books: stories of the built-in world, a few per file."""

from __future__ import annotations

from pathlib import Path

from llm_core.data import synthetic


def write_corpus(folder: Path, num_docs: int = 240, num_files: int = 4) -> str:
    """`num_docs` stories spread over `num_files` .txt files in `folder` (created); returns the folder."""
    texts, _ = synthetic.generate_stories(0, num_docs)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_files):
        (folder / f"part{i}.txt").write_text("\n\n".join(texts[i::num_files]) + "\n", encoding="utf-8")
    return str(folder)
