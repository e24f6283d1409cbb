"""Folders of the official IWSLT 2017 TED XML files: a small real corpus with talks and topics.

``data=ted data.dir=DIR[:DIR...]`` reads every ``IWSLT17.TED.{split}.{de-en|en-de}.{lang}.xml``
below the folders, plain, gzipped (``.xml.gz``) or inside ``.tgz`` archives (the official
evaluation archives), and builds the splits named by ``data.train_splits``,
``data.valid_splits`` and ``data.test_splits`` from them. The two languages'
files meet by (talk id, segment id). Each training pair keeps its talk id (for
``partition=natural``) and a topic (for ``partition=dirichlet partition.label=topic``):
the first of TED's broad themes below that the talk's keywords name, else "other".
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

from fedq.data.corpus import CorpusError, ParallelCorpus
from fedq.data.iwslt import align_segments, parse_iwslt_xml

# TED's broad themes, most specific first; a talk's topic is the first one its keywords name.
TOPICS = ("technology", "science", "global issues", "business", "design", "entertainment", "education",
          "health", "art", "music", "culture")
_NAME = re.compile(r"IWSLT17\.TED\.(?P<split>[\w]+)\.(?P<pair>de-en|en-de)\.(?P<lang>de|en)\.xml$")


def load_ted_xml(
    dirs: str,
    src: str,
    tgt: str,
    train_splits: Sequence[str],
    valid_splits: Sequence[str],
    test_splits: Sequence[str],
) -> ParallelCorpus:
    files = _index([Path(d).expanduser() for d in dirs.split(os.pathsep) if d])
    train, talks, topics = [], [], []
    for talk, s, t, topic in _read_splits(files, train_splits, src, tgt, "train"):
        train.append((s, t))
        talks.append(talk)
        topics.append(topic)
    valid = [(s, t) for _, s, t, _ in _read_splits(files, valid_splits, src, tgt, "valid")]
    test = [(s, t) for _, s, t, _ in _read_splits(files, test_splits, src, tgt, "test")]
    return ParallelCorpus("ted", src, tgt, train, valid, test, train_talks=talks, train_topics=topics)


def _index(dirs: list[Path]) -> dict[tuple[str, str], Callable[[], str]]:
    """(split, lang) -> a function that reads that file's text, for every XML file below the folders."""
    files: dict[tuple[str, str], Callable[[], str]] = {}
    for folder in dirs:
        if not folder.is_dir():
            raise CorpusError(f"data.dir entry {str(folder)!r} is not a folder")
        for path in sorted(folder.rglob("*")):
            name = path.name.removesuffix(".gz")
            if (match := _NAME.match(name)) and path.is_file():
                files.setdefault((match["split"], match["lang"]), _file_reader(path))
            elif path.name.endswith((".tgz", ".tar.gz")) and path.is_file():
                for member, reader in _archive_readers(path):
                    if match := _NAME.match(Path(member).name):
                        files.setdefault((match["split"], match["lang"]), reader)
    return files


def _file_reader(path: Path) -> Callable[[], str]:
    def read() -> str:
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise CorpusError(f"cannot read {path}: {err or type(err).__name__}") from None
    return read


def _archive_readers(archive: Path) -> list[tuple[str, Callable[[], str]]]:
    try:
        with tarfile.open(archive) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorpusError(f"cannot read {archive}: {err or 'the archive is truncated'}") from None

    def reader(member: str) -> Callable[[], str]:
        def read() -> str:
            try:
                with tarfile.open(archive) as tar:
                    handle = tar.extractfile(member)
                    return handle.read().decode("utf-8") if handle else ""
            except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as err:
                raise CorpusError(f"cannot read {member} in {archive}: {err or type(err).__name__}") from None
        return read

    return [(name, reader(name)) for name in names]


def _read_splits(
    files: dict[tuple[str, str], Callable[[], str]], splits: Sequence[str], src: str, tgt: str, role: str
) -> list[tuple[str, str, str, str]]:
    """(talk, source, target, topic) of every segment of ``splits``."""
    rows = []
    for split in splits:
        missing = [lang for lang in (src, tgt) if (split, lang) not in files]
        if missing:
            found = sorted({s for s, _ in files})
            raise CorpusError(f"data.{role}_splits names {split}, but no {split} file in {missing[0]} was found "
                              f"(splits found: {', '.join(found) or 'none'})")
        src_rows, keywords = parse_iwslt_xml(files[(split, src)](), f"{split}.{src}")
        tgt_rows, _ = parse_iwslt_xml(files[(split, tgt)](), f"{split}.{tgt}")
        for talk, s, t in align_segments(src_rows, tgt_rows, f"{split}.{src}", f"{split}.{tgt}"):
            rows.append((talk, s, t, talk_topic(keywords.get(talk, []))))
    return rows


def talk_topic(keywords: Sequence[str]) -> str:
    named = {k.lower() for k in keywords}
    return next((topic for topic in TOPICS if topic in named), "other")
