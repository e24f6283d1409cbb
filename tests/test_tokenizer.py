"""SentencePiece tokenizer: round trips, special ids, caching by corpus and settings."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

import fedq.data.tokenizer as tokmod
from fedq.data.corpus import ParallelCorpus
from fedq.data.tokenizer import SubwordTokenizer, load_or_train_tokenizer

SENTENCES = [
    ("Der Bär schläft im Wald.", "The bear sleeps in the forest."),
    ("Über die Brücke läuft ein großer Hund!", "A big dog runs over the bridge!"),
    ("Können Sie mir helfen, bitte?", "Can you help me, please?"),
    ("Die Straße ist nass; es hat geregnet.", "The street is wet; it has rained."),
    ('Sie sagte: "Grüß Gott" und lächelte.', 'She said: "Hello" and smiled.'),
]


def make_corpus(n: int = 400, seed: int = 0) -> ParallelCorpus:
    rng = random.Random(seed)
    words_de = "der die das Bär Hund Katze schläft läuft über Brücke Straße groß klein schön Mädchen".split()
    words_en = "the a bear dog cat sleeps runs over bridge street big small nice girl boy".split()
    train = [(" ".join(rng.choices(words_de, k=6)) + ".", " ".join(rng.choices(words_en, k=6)) + ".")
             for _ in range(n)] + SENTENCES * 3
    return ParallelCorpus("toy", "de", "en", train, SENTENCES[:2], SENTENCES[2:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_or_train_tokenizer(make_corpus(), 300, cache), cache


def test_round_trip_and_no_specials_in_encoding(trained):
    tok, _ = trained
    for pair in SENTENCES:
        for text in pair:
            ids = tok.encode(text)
            assert ids and not {tok.pad_id, tok.bos_id, tok.eos_id} & set(ids)
            assert tok.unk_id not in ids
            assert tok.decode(ids) == text
            assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.pad_id]) == text
            assert tok.decode([*ids, tok.eos_id, *tok.encode("Nachsatz")]) == text  # stops at eos


def test_special_ids_match_the_model(trained):
    tok, cache = trained
    (path,) = (cache / "tokenizers").glob("*.model")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == sp.vocab_size() <= 300


def test_cache_hit_does_not_train(trained, monkeypatch):
    tok, cache = trained
    monkeypatch.setattr(tokmod, "train_sentencepiece", lambda *a: pytest.fail("trained again instead of loading"))
    again = load_or_train_tokenizer(make_corpus(), 300, cache)
    assert again.fingerprint == tok.fingerprint
    assert again.encode("Der Hund läuft.") == tok.encode("Der Hund läuft.")


def test_other_vocab_size_or_corpus_gets_its_own_file(trained, tmp_path):
    tok, cache = trained
    before = set((cache / "tokenizers").glob("*.model"))
    other = load_or_train_tokenizer(make_corpus(), 100, cache)
    assert other.vocab_size == 100
    other_corpus = load_or_train_tokenizer(make_corpus(seed=1), 300, cache)
    after = set((cache / "tokenizers").glob("*.model"))
    assert len(after - before) == 2
    assert len({tok.fingerprint, other.fingerprint, other_corpus.fingerprint}) == 3
    assert not list((cache / "tokenizers").glob("*.tmp"))


def test_large_requested_vocab_on_small_corpus_and_save_load(tmp_path):
    tok = load_or_train_tokenizer(make_corpus(50), 5000, tmp_path)
    assert 4 < tok.vocab_size < 5000
    tok.save(tmp_path / "copy.model")
    loaded = SubwordTokenizer.load(tmp_path / "copy.model")
    assert loaded.fingerprint == tok.fingerprint and loaded.vocab_size == tok.vocab_size
    assert loaded.decode(loaded.encode("Der Bär schläft.")) == "Der Bär schläft."


def test_training_is_deterministic(tmp_path):
    a = load_or_train_tokenizer(make_corpus(), 250, tmp_path / "a")
    b = load_or_train_tokenizer(make_corpus(), 250, tmp_path / "b")
    assert a.fingerprint == b.fingerprint
