"""IWSLT 2017 TED talks, German–English, in the official release formats.

Training text is tag-per-line (``train.tags.de-en.{de,en}``: metadata lines such as
``<talkid>535</talkid>`` between the talks' sentences); dev/test sets are XML
(``IWSLT17.TED.{split}.de-en.{lang}.xml``: ``<doc docid=..>`` with ``<talkid>`` and
``<seg id="N">``). The release archive is downloaded once from the Hugging Face hub
and extracted into ``cache_dir/iwslt2017``; the official evaluation archives
(tst2016, tst2017) may be extracted into the same folder to test on those.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Optional

from fedq.data.corpus import CorpusError, Pairs, ParallelCorpus, download

BASE_URL = "https://huggingface.co/datasets/IWSLT/iwslt2017/resolve/main/data/2017-01-trnted/texts"
ARCHIVE = "de/en/de-en.tgz"  # relative to BASE_URL; holds both languages
LANGS = ("de", "en")
VALID_SPLIT = "dev2010"
DEFAULT_TEST_SPLIT = "tst2015"

_TALKID = re.compile(r"<talkid>\s*([^<]*?)\s*</talkid>")
_TAG_LINE = re.compile(r"</?[A-Za-z][\w-]*(\s[^>]*)?/?>(.*>)?")
_BARE_AMPERSAND = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)")


def load_iwslt2017(
    cache_dir: str | Path, src: str, tgt: str, test_split: Optional[str] = None, base_url: str = BASE_URL
) -> ParallelCorpus:
    """Train on the talks of the release, validate on dev2010, test on ``test_split`` (tst2015)."""
    root = Path(cache_dir).expanduser() / "iwslt2017"
    _ensure_release(root, base_url)
    train, talks = _read_train(root, src, tgt)
    return ParallelCorpus(
        name="iwslt2017",
        src_lang=src,
        tgt_lang=tgt,
        train=train,
        valid=_read_xml_pairs(root, VALID_SPLIT, src, tgt),
        test=_read_xml_pairs(root, test_split or DEFAULT_TEST_SPLIT, src, tgt),
        train_talks=talks,
    )


def read_iwslt_tags(path: str | Path) -> list[tuple[str, str]]:
    """(talk id, sentence) for every non-tag line of a ``train.tags`` file.

    Blank lines are kept (as "") so that the two languages stay line-aligned.
    The talk id of a sentence is the most recent ``<talkid>`` ("" before the first).
    """
    talk = ""
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            match = _TALKID.search(line)
            if match and line.startswith("<"):
                talk = match.group(1)
            elif not _TAG_LINE.fullmatch(line):
                out.append((talk, line))
    return out


def read_iwslt_xml(path: str | Path) -> list[tuple[str, str, str]]:
    """(talk id, seg id, text) for every ``<seg>`` of an IWSLT dev/test XML file, in file order.

    The talk id is the document's ``<talkid>``, or its ``docid`` when that is missing.
    """
    return parse_iwslt_xml(Path(path).read_text(encoding="utf-8"), str(path))[0]


def parse_iwslt_xml(text: str, name: str) -> tuple[list[tuple[str, str, str]], dict[str, list[str]]]:
    """The segments of an IWSLT XML document (as ``read_iwslt_xml``) and each talk's ``<keywords>``."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        try:  # stray '&' in older releases; escape it and retry
            root = ET.fromstring(_BARE_AMPERSAND.sub("&amp;", text))
        except ET.ParseError as e:
            raise CorpusError(f"cannot parse {name}: {e}") from None
    segments, keywords = [], {}
    for doc in root.iter("doc"):
        talk = (doc.findtext("talkid") or doc.get("docid") or "").strip()
        keywords[talk] = [k.strip() for k in (doc.findtext("keywords") or "").split(",") if k.strip()]
        for seg in doc.iter("seg"):
            segments.append((talk, seg.get("id", ""), "".join(seg.itertext()).strip()))
    return segments, keywords


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing absolute paths, '..' and anything but files and folders."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
                    raise CorpusError(f"refusing to extract {m.name!r} from {archive}: unsafe path or link")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as e:  # EOFError: a truncated .tgz
        raise CorpusError(f"cannot extract {archive}: {e or 'the archive is truncated'}") from None


def _ensure_release(root: Path, base_url: str) -> None:
    if _find_train(root, "de") is not None:
        return
    archive = root / Path(ARCHIVE).name
    if not archive.is_file():
        url = f"{base_url}/{ARCHIVE}"
        try:
            download(url, archive)
        except OSError as e:
            raise CorpusError(
                f"could not download IWSLT 2017 from {url} ({e}); put {archive.name} into {root} by hand, "
                "or use data=textdir data.dir=PATH, data=multi30k or data=demo"
            ) from e
    tmp = Path(tempfile.mkdtemp(prefix="extract.", dir=root))
    try:
        safe_extract(archive, tmp)
        for child in tmp.iterdir():  # move into place only once complete
            target = root / child.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            child.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if _find_train(root, "de") is None:
        raise CorpusError(f"{archive} has no train.tags.de-en.de; is it the IWSLT 2017 de-en training release?")


def _find_train(root: Path, lang: str) -> Optional[Path]:
    if not root.is_dir():
        return None
    return next(iter(sorted(root.rglob(f"train.tags.de-en.{lang}"))), None)


def _read_train(root: Path, src: str, tgt: str) -> tuple[Pairs, list[str]]:
    paths = {}
    for lang in (src, tgt):
        path = _find_train(root, lang)
        if path is None:
            raise CorpusError(f"missing train.tags.de-en.{lang} under {root}")
        paths[lang] = path
    src_rows, tgt_rows = read_iwslt_tags(paths[src]), read_iwslt_tags(paths[tgt])
    if [t for t, _ in src_rows] != [t for t, _ in tgt_rows]:
        raise CorpusError(
            f"{paths[src].name} ({len(src_rows)} sentences) and {paths[tgt].name} "
            f"({len(tgt_rows)} sentences) are not aligned talk by talk"
        )
    kept = [(talk, s, t) for (talk, s), (_, t) in zip(src_rows, tgt_rows) if s and t]
    return [(s, t) for _, s, t in kept], [talk for talk, _, _ in kept]


def _xml_file(root: Path, split: str, lang: str) -> Path:
    for pair in ("de-en", "en-de"):
        found = sorted(root.rglob(f"IWSLT17.TED.{split}.{pair}.{lang}.xml"))
        if found:
            return found[0]
    available = sorted({p.name.split(".")[2] for p in root.rglob("IWSLT17.TED.*.xml")})
    raise CorpusError(
        f"no IWSLT17.TED.{split}.de-en.{lang}.xml under {root}; splits found: {', '.join(available) or 'none'}"
    )


def _read_xml_pairs(root: Path, split: str, src: str, tgt: str) -> Pairs:
    """Pairs of the two languages' XML files, aligned by (talk, seg id), in source order."""
    src_path, tgt_path = _xml_file(root, split, src), _xml_file(root, split, tgt)
    aligned = align_segments(read_iwslt_xml(src_path), read_iwslt_xml(tgt_path), src_path.name, tgt_path.name)
    return [(s, t) for _, s, t in aligned]


def align_segments(
    src_rows: list[tuple[str, str, str]], tgt_rows: list[tuple[str, str, str]], src_name: str, tgt_name: str
) -> list[tuple[str, str, str]]:
    """(talk, source, target) of the segments two XML files share by (talk, seg id), in source order."""
    targets = {(talk, seg): text for talk, seg, text in tgt_rows}
    if len(targets) != len(tgt_rows) or sorted(targets) != sorted((t, s) for t, s, _ in src_rows):
        raise CorpusError(f"{src_name} and {tgt_name} do not hold the same (talk, seg id) segments")
    return [(talk, text, targets[(talk, seg)]) for talk, seg, text in src_rows if text or targets[(talk, seg)]]
