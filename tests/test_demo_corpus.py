"""The built-in demo corpus: determinism, sizes, disjoint splits and grammar."""

import random
import re
import time

import pytest

from fedq.data.demo import (
    ADJECTIVE,
    COPULA,
    NOUN,
    VERB,
    Clause,
    DemoCorpusError,
    Phrase,
    build_demo_corpus,
    conjugate,
    english_clause,
    english_third_person,
    german_main,
    german_subordinate,
    noun_phrase,
    prepositional_phrase,
    sample_sentence,
)


@pytest.fixture(scope="module")
def default_corpus():
    start = time.perf_counter()
    corpus = build_demo_corpus()
    return corpus, time.perf_counter() - start


def test_default_size_distinct_disjoint_and_fast(default_corpus):
    (train, valid, test), seconds = default_corpus
    assert seconds < 5.0
    assert (len(train), len(valid), len(test)) == (24000, 1000, 1000)
    train_src = {de for de, _ in train}
    valid_src, test_src = {de for de, _ in valid}, {de for de, _ in test}
    assert len(train_src) == 24000 and len(valid_src) == 1000 and len(test_src) == 1000
    assert not train_src & valid_src and not train_src & test_src and not valid_src & test_src


def test_sentence_shape(default_corpus):
    (train, _, _), _ = default_corpus
    for de, en in train:
        assert 3 <= len(de.split()) <= 25 and 2 <= len(en.split()) <= 25
        assert de[0].isupper() and en[0].isupper()
        assert de.endswith(".") and en.endswith(".") and not de.endswith("..")
    verb_final = [de for de, _ in train if ", weil " in de]
    assert len(verb_final) > 500  # subordinate clauses are common, not a corner case


def test_deterministic_per_seed():
    first = build_demo_corpus(300, 20, seed=3)
    assert first == build_demo_corpus(300, 20, seed=3)
    assert first != build_demo_corpus(300, 20, seed=4)
    train, valid, test = first
    assert (len(train), len(valid), len(test)) == (300, 20, 20)


@pytest.mark.parametrize("train_size, eval_size", [(0, 10), (10, 0), (-5, 10)])
def test_bad_sizes_rejected(train_size, eval_size):
    with pytest.raises(DemoCorpusError, match="must be positive"):
        build_demo_corpus(train_size, eval_size)
    assert issubclass(DemoCorpusError, ValueError)


@pytest.mark.parametrize("noun, case, det, adjective, plural, de, en", [
    ("Hund", "dat", "def", "klein", False, "dem kleinen Hund", "the small dog"),
    ("Ball", "acc", "indef", "rot", False, "einen roten Ball", "a red ball"),
    ("Apfel", "nom", "drei", "rot", True, "drei rote Äpfel", "three red apples"),
    ("Apfel", "dat", "drei", "rot", True, "drei roten Äpfeln", "three red apples"),
    ("Katze", "dat", "indef", "müde", False, "einer müden Katze", "a tired cat"),
    ("Pferd", "nom", "indef", "schwarz", False, "ein schwarzes Pferd", "a black horse"),
    ("Pferd", "nom", "def", "schwarz", False, "das schwarze Pferd", "the black horse"),
    ("Buch", "acc", "mein", "neu", False, "mein neues Buch", "my new book"),
    ("Hund", "nom", "kein", None, True, "keine Hunde", "no dogs"),
    ("Kind", "dat", "def", None, True, "den Kindern", "the children"),
    ("Auto", "dat", "def", None, True, "den Autos", "the cars"),
    ("Junge", "acc", "def", None, False, "den Jungen", "the boy"),
    ("Junge", "nom", "def", None, False, "der Junge", "the boy"),
    ("Maus", "acc", "bare", None, True, "Mäuse", "mice"),
    ("Hund", "dat", "unser", "alt", False, "unserem alten Hund", "our old dog"),
])
def test_noun_phrase_declension(noun, case, det, adjective, plural, de, en):
    phrase = noun_phrase(NOUN[noun], case, det, ADJECTIVE[adjective] if adjective else None, plural)
    assert phrase == Phrase(de, en)


def test_english_indefinite_article_follows_next_word():
    assert noun_phrase(NOUN["Apfel"], "acc", "indef").en == "an apple"
    assert noun_phrase(NOUN["Apfel"], "acc", "indef", ADJECTIVE["klein"]).en == "a small apple"
    assert noun_phrase(NOUN["Hund"], "acc", "indef", ADJECTIVE["alt"]).en == "an old dog"
    assert noun_phrase(NOUN["Regenschirm"], "nom", "indef").en == "an umbrella"


def test_english_indefinite_articles_in_corpus(default_corpus):
    (train, _, _), _ = default_corpus
    text = " ".join(en for _, en in train).lower()
    assert not re.search(r"\ba [aeiou]", text)
    assert not re.search(r"\ban [^aeiou\s]", text)
    assert " an apple" in text and " a dog" in text


def test_contraction_and_prepositions():
    park = noun_phrase(NOUN["Park"], "dat", "def", ADJECTIVE["groß"])
    assert prepositional_phrase("in", "in", park) == Phrase("im großen Park", "in the big park")
    dog = noun_phrase(NOUN["Hund"], "dat", "def")
    assert prepositional_phrase("mit", "with", dog) == Phrase("mit dem Hund", "with the dog")


@pytest.mark.parametrize("verb, forms", [
    ("sehen", ("sehe", "siehst", "sieht", "sehen", "seht", "sehen")),
    ("arbeiten", ("arbeite", "arbeitest", "arbeitet", "arbeiten", "arbeitet", "arbeiten")),
    ("öffnen", ("öffne", "öffnest", "öffnet", "öffnen", "öffnet", "öffnen")),
    ("zeichnen", ("zeichne", "zeichnest", "zeichnet", "zeichnen", "zeichnet", "zeichnen")),
    ("tanzen", ("tanze", "tanzt", "tanzt", "tanzen", "tanzt", "tanzen")),
    ("schwimmen", ("schwimme", "schwimmst", "schwimmt", "schwimmen", "schwimmt", "schwimmen")),
    ("halten", ("halte", "hältst", "hält", "halten", "haltet", "halten")),
    ("anrufen", ("rufe", "rufst", "ruft", "rufen", "ruft", "rufen")),
])
def test_german_conjugation(verb, forms):
    assert tuple(conjugate(VERB[verb], person) for person in range(6)) == forms


def test_english_third_person():
    assert [english_third_person(v) for v in ("see", "watch", "carry", "play", "look for", "wash")] == [
        "sees", "watches", "carries", "plays", "looks for", "washes"]


def _woman_sees_dog(**kwargs):
    woman = noun_phrase(NOUN["Frau"], "nom", "def")
    dog = noun_phrase(NOUN["Hund"], "acc", "def", ADJECTIVE["klein"])
    return Clause(woman, 2, VERB["sehen"], objects=(dog,), **kwargs)


def test_verb_second_and_verb_final_order():
    clause = _woman_sees_dog()
    assert german_main(clause) == "die Frau sieht den kleinen Hund"
    assert german_subordinate(clause, "weil") == "weil die Frau den kleinen Hund sieht"
    assert english_clause(clause) == "the woman sees the small dog"
    perfect = _woman_sees_dog(tense="perfect")
    assert german_main(perfect) == "die Frau hat den kleinen Hund gesehen"
    assert german_subordinate(perfect, "dass") == "dass die Frau den kleinen Hund gesehen hat"
    assert english_clause(perfect) == "the woman saw the small dog"
    modal = _woman_sees_dog(tense="können", negated=True)
    assert german_main(modal) == "die Frau kann den kleinen Hund nicht sehen"
    assert english_clause(modal) == "the woman cannot see the small dog"


def test_fronted_adverb_inverts_subject_and_negation_uses_do():
    clause = _woman_sees_dog(adverb=Phrase("heute", "today"), negated=True)
    assert german_main(clause, front="adverb") == "heute sieht die Frau den kleinen Hund nicht"
    assert english_clause(clause, front="adverb") == "today the woman does not see the small dog"
    assert german_main(clause) == "die Frau sieht heute den kleinen Hund nicht"
    assert english_clause(clause) == "the woman does not see the small dog today"


def test_subordinate_clause_first_puts_main_verb_first():
    main = _woman_sees_dog()
    sub = Clause(Phrase("er", "he"), 2, VERB["schlafen"])
    assert german_main(main, lead=german_subordinate(sub, "wenn")) == (
        "wenn er schläft, sieht die Frau den kleinen Hund")


def test_separable_verb_bracket():
    clause = Clause(Phrase("ich", "I"), 0, VERB["anrufen"], objects=(noun_phrase(NOUN["Arzt"], "acc", "def"),))
    assert german_main(clause) == "ich rufe den Arzt an"
    assert german_subordinate(clause, "weil") == "weil ich den Arzt anrufe"
    assert german_subordinate(Clause(clause.subject, 0, clause.verb, "perfect", clause.objects), "weil") == (
        "weil ich den Arzt angerufen habe")
    assert english_clause(clause) == "I call the doctor"


def test_copula_and_perfect_with_sein():
    cat = noun_phrase(NOUN["Katze"], "nom", "def", plural=True)
    tired = Clause(cat, 5, COPULA, predicate=Phrase("müde", "tired"), negated=True)
    assert german_main(tired) == "die Katzen sind nicht müde"
    assert english_clause(tired) == "the cats are not tired"
    ran = Clause(Phrase("du", "you"), 1, VERB["laufen"], "perfect", frequency=True, adverb=Phrase("oft", "often"))
    assert german_main(ran) == "du bist oft gelaufen"
    assert english_clause(ran) == "you often ran"


def test_sampler_is_seeded():
    a, b = random.Random(9), random.Random(9)
    assert [sample_sentence(a) for _ in range(50)] == [sample_sentence(b) for _ in range(50)]
