"""Corpus loaders: textdir layouts, IWSLT 2017 official formats, downloads from file:// URLs."""

from __future__ import annotations

import gzip
import io
import os
import sys
import tarfile
import types
from pathlib import Path

import pytest

from fedq.data.corpora import load_corpus
from fedq.data.corpus import CorpusError, ParallelCorpus
from fedq.data.iwslt import (
    load_iwslt2017,
    read_iwslt_tags,
    read_iwslt_xml,
    safe_extract,
)
from fedq.data.multi30k import load_multi30k
from fedq.data.settings import DataConfig
from fedq.data.textdir import load_textdir

# The project's shared data folder sits beside the repository (../shared/data).
SHARED = Path(os.environ.get("FEDQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def write(path: Path, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- textdir


def test_textdir_multi30k_layout_gz_and_first_test_split(tmp_path):
    write(tmp_path / "train.de.gz", ["Ein Hund läuft.", "", "Zwei Männer."])
    write(tmp_path / "train.en.gz", ["A dog runs.", "Nothing", "Two men."])
    write(tmp_path / "val.de.gz", ["Ein Ball.", "", ""])
    write(tmp_path / "val.en.gz", ["A ball.", "only english", ""])
    write(tmp_path / "test_2017_flickr.de.gz", ["später"])
    write(tmp_path / "test_2017_flickr.en.gz", ["later"])
    write(tmp_path / "test_2016_flickr.de.gz", ["  Eine Katze.  "])
    write(tmp_path / "test_2016_flickr.en.gz", ["A cat."])
    write(tmp_path / "test_2018_flickr.en.gz", ["english only"])  # no German side: never chosen

    corpus = load_textdir(tmp_path, "de", "en")
    assert corpus.train == [("Ein Hund läuft.", "A dog runs."), ("Zwei Männer.", "Two men.")]
    assert corpus.valid == [("Ein Ball.", "A ball."), ("", "only english")]  # alignment kept for eval
    assert corpus.test == [("Eine Katze.", "A cat.")]  # first sorted test* with both languages, stripped

    reverse = load_textdir(tmp_path, "en", "de", test_split="test_2017_flickr")
    assert reverse.train[0] == ("A dog runs.", "Ein Hund läuft.")
    assert reverse.test == [("later", "später")]


def test_textdir_fairseq_iwslt14_layout(tmp_path):
    for split, n in (("train", 5), ("valid", 2), ("test", 3)):
        write(tmp_path / f"{split}.de", [f"de {split} {i}" for i in range(n)])
        write(tmp_path / f"{split}.en", [f"en {split} {i}" for i in range(n)])
    corpus = load_textdir(tmp_path, "de", "en")
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (5, 2, 3)
    assert corpus.valid[1] == ("de valid 1", "en valid 1")


def test_textdir_missing_file_names_path_and_contents(tmp_path):
    write(tmp_path / "train.de", ["a"])
    write(tmp_path / "train.en", ["b"])
    with pytest.raises(CorpusError, match=r"missing .*val\.de.*found in .*train\.de, train\.en"):
        load_textdir(tmp_path, "de", "en")


def test_textdir_line_count_mismatch(tmp_path):
    write(tmp_path / "train.de", ["a", "b", "c"])
    write(tmp_path / "train.en", ["a", "b"])
    with pytest.raises(CorpusError, match=r"train\.de has 3 lines but train\.en has 2"):
        load_textdir(tmp_path, "de", "en")


# ---------------------------------------------------------------- load_corpus


def small_textdir(root: Path, n_train: int = 6, n_eval: int = 4) -> Path:
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        write(root / f"{split}.de", [f"de {split} {i}" for i in range(n)])
        write(root / f"{split}.fr", [f"fr {split} {i}" for i in range(n)])
        write(root / f"{split}.en", [f"en {split} {i}" for i in range(n)])
    return root


def test_load_corpus_limits_and_other_languages(tmp_path):
    cfg = DataConfig(name="textdir", dir=str(small_textdir(tmp_path)), src="fr", tgt="de",
                     max_train_pairs=2, max_eval_pairs=3)
    corpus = load_corpus(cfg)
    assert corpus.train == [("fr train 0", "de train 0"), ("fr train 1", "de train 1")]
    assert len(corpus.valid) == len(corpus.test) == 3
    assert corpus.valid[0] == ("fr dev 0", "de dev 0")


def test_load_corpus_rejects_bad_input(tmp_path):
    with pytest.raises(CorpusError, match="demo, textdir, multi30k, iwslt2017"):
        load_corpus(DataConfig(name="wmt14"))
    with pytest.raises(CorpusError, match="data.dir"):
        load_corpus(DataConfig(name="textdir"))
    with pytest.raises(CorpusError, match="German"):
        load_corpus(DataConfig(name="multi30k", src="fr", tgt="en"))
    empty = tmp_path / "empty"
    empty.mkdir()
    small_textdir(empty, n_train=0)
    with pytest.raises(CorpusError, match="empty train split"):
        load_corpus(DataConfig(name="textdir", dir=str(empty)))


def test_load_corpus_demo_direction(monkeypatch):
    def fake_demo(train_size, eval_size, seed):
        pairs = [(f"de{seed}-{i}", f"en{seed}-{i}") for i in range(train_size)]
        return pairs, pairs[:eval_size], pairs[:eval_size]

    monkeypatch.setitem(sys.modules, "fedq.data.demo", types.SimpleNamespace(build_demo_corpus=fake_demo))
    de_en = load_corpus(DataConfig(name="demo", demo_train_size=5, demo_eval_size=2, seed=7))
    en_de = load_corpus(DataConfig(name="demo", src="en", tgt="de", demo_train_size=5, demo_eval_size=2, seed=7))
    assert de_en.train[3] == ("de7-3", "en7-3") and len(de_en.valid) == 2
    assert en_de.train[3] == ("en7-3", "de7-3") and en_de.test[1] == ("en7-1", "de7-1")


def test_fingerprint_is_stable_and_content_sensitive():
    a = ParallelCorpus("x", "de", "en", [("a", "b")], [("c", "d")], [("e", "f")])
    same = ParallelCorpus("y", "de", "en", [("a", "b")], [("c", "d")], [("e", "f")])
    assert a.fingerprint() == same.fingerprint() and len(a.fingerprint()) == 64
    assert a.fingerprint() != ParallelCorpus("x", "de", "en", [("a", "bb")], [("c", "d")], [("e", "f")]).fingerprint()
    assert a.fingerprint() != ParallelCorpus("x", "en", "de", [("a", "b")], [("c", "d")], [("e", "f")]).fingerprint()
    # moving a string across the pair boundary changes the hash
    assert ParallelCorpus("x", "de", "en", [("ab", "")], [], []).fingerprint() != ParallelCorpus(
        "x", "de", "en", [("a", "b")], [], []).fingerprint()


# ---------------------------------------------------------------- IWSLT 2017 formats

TALKS = {  # talk id -> [(de, en), ...]
    "535": [("Danke, Chris.", "Thank you, Chris."), ("Es ist großartig & schön.", "It's great & nice.")],
    "531": [("Hallo!", "Hello!"), ("", ""), ("Wie geht's?", "How are you?")],
}


def tags_file(lang: str) -> str:
    lines = []
    for talk, pairs in TALKS.items():
        title = "Titel" if lang == "de" else "Title"
        lines += [f"<url>http://www.ted.com/talks/{talk}.html</url>", "<keywords>talks, science</keywords>",
                  "<speaker>Some One</speaker>", f"<talkid>{talk}</talkid>", f"<title>{title}</title>",
                  "<description>TED Talk Subtitles and Transcript: x</description>"]
        lines += [de if lang == "de" else en for de, en in pairs]
        lines += ['<reviewer href="http://x">R</reviewer>', "<translator></translator>"]
    return "\n".join(lines) + "\n"


def xml_file(split: str, lang: str, segs: dict[str, list[str]], escape_amp: bool = True) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
           f'<srcset setid="iwslt2017-{split}" srclang="{lang}">']
    for talk, texts in segs.items():
        out += [f'<doc docid="{talk}" genre="lectures">', "<url>http://www.ted.com/x</url>",
                f"<talkid>{talk}</talkid>", "<title>T &amp; U</title>"]
        for i, text in enumerate(texts, 1):
            text = text.replace("&", "&amp;") if escape_amp else text
            out.append(f'<seg id="{i}"> {text} </seg>')
        out += ["<reviewer></reviewer>", "<translator></translator>", "</doc>"]
    return "\n".join(out + ["</srcset>", "</mteval>"]) + "\n"


def eval_segs(split: str, lang: str) -> dict[str, list[str]]:
    return {talk: [f"{split} {lang} {talk}.{i} & co" for i in range(1, 4)] for talk in ("1", "2")}


def build_release(folder: Path) -> Path:
    """A small de-en.tgz in the layout of the official 2017-01-trnted release."""
    members = {f"de-en/train.tags.de-en.{lang}": tags_file(lang) for lang in ("de", "en")}
    for split in ("dev2010", "tst2014", "tst2015"):
        for lang in ("de", "en"):
            members[f"de-en/IWSLT17.TED.{split}.de-en.{lang}.xml"] = xml_file(split, lang, eval_segs(split, lang))
    members["de-en/README"] = "IWSLT 2017"
    archive = folder / "de" / "en" / "de-en.tgz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder


def test_read_iwslt_tags(tmp_path):
    path = tmp_path / "train.tags.de-en.de"
    path.write_text(tags_file("de"), encoding="utf-8")
    rows = read_iwslt_tags(path)
    assert rows == [("535", "Danke, Chris."), ("535", "Es ist großartig & schön."),
                    ("531", "Hallo!"), ("531", ""), ("531", "Wie geht's?")]


def test_read_iwslt_xml_escaped_and_bare_ampersands(tmp_path):
    segs = {"7": ["A & B", "<nope"], "9": ["C"]}
    good = tmp_path / "good.xml"
    good.write_text(xml_file("tst2015", "en", {"7": ["A & B"], "9": ["C"]}), encoding="utf-8")
    assert read_iwslt_xml(good) == [("7", "1", "A & B"), ("9", "1", "C")]
    bare = tmp_path / "bare.xml"
    bare.write_text(xml_file("tst2015", "en", {"7": ["A & B"]}, escape_amp=False), encoding="utf-8")
    assert read_iwslt_xml(bare) == [("7", "1", "A & B")]
    broken = tmp_path / "broken.xml"
    broken.write_text(xml_file("tst2015", "en", segs, escape_amp=False), encoding="utf-8")
    with pytest.raises(CorpusError, match="cannot parse"):
        read_iwslt_xml(broken)


def test_iwslt_download_extract_parse_and_cache(tmp_path):
    server = build_release(tmp_path / "server")
    cache = tmp_path / "cache"
    corpus = load_iwslt2017(cache, "de", "en", base_url=server.as_uri())
    assert corpus.train == [("Danke, Chris.", "Thank you, Chris."),
                            ("Es ist großartig & schön.", "It's great & nice."),
                            ("Hallo!", "Hello!"), ("Wie geht's?", "How are you?")]
    assert corpus.train_talks == ["535", "535", "531", "531"]
    assert corpus.valid[0] == ("dev2010 de 1.1 & co", "dev2010 en 1.1 & co") and len(corpus.valid) == 6
    assert corpus.test[5] == ("tst2015 de 2.3 & co", "tst2015 en 2.3 & co")
    assert not list((cache / "iwslt2017").glob("extract.*"))  # temp folder cleaned up

    # cached: no network needed any more, other direction and test split
    offline = (tmp_path / "nowhere").as_uri()
    reverse = load_iwslt2017(cache, "en", "de", test_split="tst2014", base_url=offline)
    assert reverse.train[0] == ("Thank you, Chris.", "Danke, Chris.")
    assert reverse.test[0] == ("tst2014 en 1.1 & co", "tst2014 de 1.1 & co")
    with pytest.raises(CorpusError, match="splits found: dev2010, tst2014, tst2015"):
        load_iwslt2017(cache, "de", "en", test_split="tst2013", base_url=offline)


def test_iwslt_offline_without_cache(tmp_path):
    expected = r"could not download.*de-en\.tgz into .*data=textdir.*data=multi30k.*data=demo"
    with pytest.raises(CorpusError, match=expected):
        load_iwslt2017(tmp_path / "cache", "de", "en", base_url=(tmp_path / "nowhere").as_uri())


def test_iwslt_misaligned_xml(tmp_path):
    root = tmp_path / "iwslt2017"
    root.mkdir()
    (root / "train.tags.de-en.de").write_text(tags_file("de"), encoding="utf-8")
    (root / "train.tags.de-en.en").write_text(tags_file("en"), encoding="utf-8")
    for lang, n in (("de", 3), ("en", 2)):
        segs = {"1": [f"s{i}" for i in range(n)]}
        for split in ("dev2010", "tst2015"):
            (root / f"IWSLT17.TED.{split}.de-en.{lang}.xml").write_text(xml_file(split, lang, segs), encoding="utf-8")
    with pytest.raises(CorpusError, match="do not hold the same"):
        load_iwslt2017(tmp_path, "de", "en")


def test_safe_extract_rejects_escaping_members(tmp_path):
    for name, kind in (("../evil.txt", tarfile.REGTYPE), ("/abs.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        archive = tmp_path / "bad.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(CorpusError, match="refusing to extract"):
            safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# ---------------------------------------------------------------- Multi30k download


def test_multi30k_download_from_file_url(tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    for split, n in (("train", 4), ("val", 2), ("test_2016_flickr", 3)):
        write(server / f"{split}.de.gz", [f"de {split} {i}" for i in range(n)])
        write(server / f"{split}.en.gz", [f"en {split} {i}" for i in range(n)])
    corpus = load_multi30k(tmp_path / "cache", "en", "de", base_url=server.as_uri())
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (4, 2, 3)
    assert corpus.test[2] == ("en test_2016_flickr 2", "de test_2016_flickr 2")
    assert sorted(p.name for p in (tmp_path / "cache" / "multi30k").iterdir()) == sorted(
        p.name for p in server.iterdir())  # no temp files left
    again = load_multi30k(tmp_path / "cache", "de", "en", base_url=(tmp_path / "nowhere").as_uri())
    assert again.train[0] == ("de train 0", "en train 0")
    with pytest.raises(CorpusError, match="could not download Multi30k.*data=textdir.*data=demo"):
        load_multi30k(tmp_path / "other", "de", "en", base_url=(tmp_path / "nowhere").as_uri())


# ---------------------------------------------------------------- real data, when present


@pytest.mark.skipif(not (SHARED / "multi30k" / "train.de.gz").exists(), reason="Multi30k files not present")
def test_real_multi30k_counts():
    corpus = load_corpus(DataConfig(name="textdir", dir=str(SHARED / "multi30k")))
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (29000, 1014, 1000)


@pytest.mark.skipif(not (SHARED / "iwslt2017-test" / "de-en.tgz").exists(), reason="IWSLT 2017 archives not present")
def test_real_iwslt2017_evaluation_archives(tmp_path):
    # a small training release, plus the official evaluation archives extracted beside it
    cache = tmp_path / "cache"
    load_iwslt2017(cache, "de", "en", base_url=build_release(tmp_path / "server").as_uri())
    for archive in ("de-en.tgz", "en-de.tgz"):
        safe_extract(SHARED / "iwslt2017-test" / archive, cache / "iwslt2017" / "eval")
    for split, n_segs, n_talks in (("tst2016", 1133, 13), ("tst2017", 1138, 10)):
        corpus = load_iwslt2017(cache, "de", "en", test_split=split, base_url="file:///nowhere")
        assert len(corpus.test) == n_segs
        assert all(de and en for de, en in corpus.test)
        de_rows = read_iwslt_xml(next((cache / "iwslt2017" / "eval").rglob(f"IWSLT17.TED.{split}.de-en.de.xml")))
        assert len({talk for talk, _, _ in de_rows}) == n_talks
        if split == "tst2016":  # German and English sides meet by (talk, seg id)
            assert corpus.test[0][0].startswith("Wir stehen vor einem historischen Wendepunkt")
            assert corpus.test[0][1].startswith("We're at a tipping point in human history")


# --- data=ted: folders of official XML files ----------------------------------


def ted_xml(split: str, lang: str, talks: dict[str, tuple[str, int]]) -> str:
    """An official-style XML file: talk id -> (keywords, number of segments)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>", f'<srcset setid="iwslt2017-{split}" srclang="{lang}">']
    for talk, (keywords, n) in talks.items():
        out += [f'<doc docid="{talk}" genre="lectures">', f"<keywords>{keywords}</keywords>", f"<talkid>{talk}</talkid>"]
        out += [f'<seg id="{i}"> {split} {lang} talk {talk} seg {i} </seg>' for i in range(1, n + 1)]
        out.append("</doc>")
    return "\n".join(out + ["</srcset>", "</mteval>"]) + "\n"


def test_ted_folders_keep_talks_topics_and_the_configured_splits(tmp_path):
    dev, test = tmp_path / "devsets", tmp_path / "test"
    dev.mkdir()
    test.mkdir()
    talks = {"dev2010": {"11": ("talks, science, technology", 3), "12": ("talks, art, culture", 2)},
             "tst2010": {"13": ("talks, business", 4)}, "tst2014": {"14": ("talks, design", 2)}}
    for split, content in talks.items():
        for lang in ("de", "en"):
            with gzip.open(dev / f"IWSLT17.TED.{split}.de-en.{lang}.xml.gz", "wt", encoding="utf-8") as handle:
                handle.write(ted_xml(split, lang, content))
    for pair, lang in (("de-en", "de"), ("en-de", "en")):  # the official archives: one source language each
        with tarfile.open(test / f"{pair}.tgz", "w:gz") as tar:
            data = ted_xml("tst2017", lang, {"15": ("talks, music", 3)}).encode()
            info = tarfile.TarInfo(f"{pair}/IWSLT17.TED.tst2017.{pair}.{lang}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cfg = DataConfig(name="ted", dir=f"{dev}{os.pathsep}{test}", train_splits=["dev2010", "tst2010"],
                     valid_splits=["tst2014"], test_splits=["tst2017"])
    corpus = load_corpus(cfg)
    assert len(corpus.train) == 9 and len(corpus.valid) == 2 and len(corpus.test) == 3
    assert corpus.train[0] == ("dev2010 de talk 11 seg 1", "dev2010 en talk 11 seg 1")
    assert corpus.train_talks == ["11"] * 3 + ["12"] * 2 + ["13"] * 4
    assert corpus.train_topics == ["technology"] * 3 + ["art"] * 2 + ["business"] * 4
    assert corpus.test[2] == ("tst2017 de talk 15 seg 3", "tst2017 en talk 15 seg 3")  # from the two archives
    with pytest.raises(CorpusError, match="data.valid_splits names tst2099, but no tst2099 file"):
        load_corpus(DataConfig(name="ted", dir=str(dev), valid_splits=["tst2099"], train_splits=["dev2010"], test_splits=["tst2014"]))


@pytest.mark.skipif(not (SHARED / "iwslt2017-devsets").is_dir(), reason="the shared IWSLT 2017 TED sets are not here")
def test_real_ted_sets_give_the_documented_sizes():
    cfg = DataConfig(name="ted", dir=f"{SHARED / 'iwslt2017-devsets'}{os.pathsep}{SHARED / 'iwslt2017-test'}")
    corpus = load_corpus(cfg)
    assert len(set(corpus.train_talks)) == 66 and len(corpus.train) == 6582
    assert len(corpus.valid) == 1305 and len(corpus.test) == 3351
