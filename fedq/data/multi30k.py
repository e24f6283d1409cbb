"""Multi30k task 1 (Flickr30k captions), downloaded once from the dataset's GitHub repository."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fedq.data.corpus import CorpusError, ParallelCorpus, download
from fedq.data.textdir import load_textdir

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
DEFAULT_TEST_SPLIT = "test_2016_flickr"


def load_multi30k(
    cache_dir: str | Path, src: str, tgt: str, test_split: Optional[str] = None, base_url: str = BASE_URL
) -> ParallelCorpus:
    """Fetch the raw ``{split}.{lang}.gz`` files into ``cache_dir/multi30k`` if absent, then read them."""
    folder = Path(cache_dir).expanduser() / "multi30k"
    test_split = test_split or DEFAULT_TEST_SPLIT
    for split in ("train", "val", test_split):
        for lang in (src, tgt):
            dest = folder / f"{split}.{lang}.gz"
            if dest.is_file():
                continue
            url = f"{base_url}/{dest.name}"
            try:
                download(url, dest)
            except OSError as e:
                raise CorpusError(
                    f"could not download Multi30k file {url} ({e}); put the files into {folder}, "
                    "or use data=textdir data.dir=PATH or data=demo"
                ) from e
    return load_textdir(folder, src, tgt, test_split=test_split, name="multi30k")
