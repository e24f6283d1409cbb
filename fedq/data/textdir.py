"""A folder of parallel text files ``{split}.{lang}`` or ``{split}.{lang}.gz``.

Covers Multi30k's layout (``train``, ``val``, ``test_2016_flickr``) and the
fairseq IWSLT14 prepared layout (``train``, ``valid``, ``test``).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

from fedq.data.corpus import CorpusError, Pairs, ParallelCorpus

VALID_PREFIXES = ("val", "valid", "dev")


def load_textdir(
    directory: str | Path, src: str, tgt: str, test_split: Optional[str] = None, name: str = "textdir"
) -> ParallelCorpus:
    """Read train/valid/test from ``directory``; see the module docstring for the layout."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise CorpusError(f"data.dir {str(root)!r} is not a directory")
    valid_prefix = next((p for p in VALID_PREFIXES if _has_split(root, p, src, tgt)), VALID_PREFIXES[0])
    test_prefix = test_split or _first_test_prefix(root, src, tgt)
    return ParallelCorpus(
        name=name,
        src_lang=src,
        tgt_lang=tgt,
        train=_drop_incomplete(read_parallel(root, "train", src, tgt)),
        valid=_drop_empty(read_parallel(root, valid_prefix, src, tgt)),
        test=_drop_empty(read_parallel(root, test_prefix, src, tgt)),
    )


def read_parallel(root: Path, prefix: str, src: str, tgt: str) -> Pairs:
    """Line-aligned (src, tgt) pairs of ``prefix.src`` and ``prefix.tgt``, stripped."""
    return read_parallel_files(_find(root, prefix, src), _find(root, prefix, tgt))


def read_parallel_files(src_path: Path, tgt_path: Path) -> Pairs:
    """Line-aligned (src, tgt) pairs of two files (plain or .gz), stripped."""
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise CorpusError(f"{path} is not a file")
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise CorpusError(
            f"{src_path.name} has {len(src_lines)} lines but {tgt_path.name} has {len(tgt_lines)}; "
            "parallel files must be line-aligned"
        )
    return list(zip(src_lines, tgt_lines))


def _find(root: Path, prefix: str, lang: str) -> Path:
    for candidate in (root / f"{prefix}.{lang}", root / f"{prefix}.{lang}.gz"):
        if candidate.is_file():
            return candidate
    found = sorted(p.name for p in root.iterdir() if p.is_file())
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") if found else "no files"
    raise CorpusError(f"missing {root / f'{prefix}.{lang}'}[.gz]; found in {root}: {shown}")


def _has_split(root: Path, prefix: str, src: str, tgt: str) -> bool:
    return all(
        (root / f"{prefix}.{lang}").is_file() or (root / f"{prefix}.{lang}.gz").is_file() for lang in (src, tgt)
    )


def _first_test_prefix(root: Path, src: str, tgt: str) -> str:
    prefixes = sorted({p.name.split(".")[0] for p in root.glob("test*") if p.is_file()})
    return next((p for p in prefixes if _has_split(root, p, src, tgt)), "test")


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.strip() for line in f]
    except (OSError, EOFError, UnicodeDecodeError) as e:  # EOFError: a truncated .gz
        raise CorpusError(f"cannot read {path}: {e or type(e).__name__}") from None


def _drop_incomplete(pairs: Pairs) -> Pairs:
    """Training pairs need both sides."""
    return [(s, t) for s, t in pairs if s and t]


def _drop_empty(pairs: Pairs) -> Pairs:
    """Evaluation keeps alignment with the reference files: drop a pair only if both sides are empty."""
    return [(s, t) for s, t in pairs if s or t]
