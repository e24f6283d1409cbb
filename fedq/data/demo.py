"""Built-in German–English demo corpus, generated offline and deterministically.

A small grammar over the lexicon in ``fedq.data.demo_lexicon``: articles by
gender, number and case; strong, weak and mixed adjective declension; weak
masculine nouns; verb-second main clauses with fronted adverbs, places and
subordinate clauses; verb-final subordinate clauses; separable verbs; the
perfect (haben/sein + participle, translated as the English simple past);
modal verbs; negation with ``nicht``/``kein`` (English do-support). The
German word order differs from the English one in most sentences, so a model
has to learn reordering and agreement, not a word-for-word dictionary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedq.data.demo_lexicon import (
    ADJECTIVES,
    AUXILIARIES,
    COMITATIVE,
    CONJUNCTIONS,
    COPULA,
    FREQUENCY_ADVERBS,
    LOCATIVE_PREPOSITIONS,
    MODALS,
    NAMES,
    NOUNS,
    NUMBERS,
    OBJECT_PRONOUNS,
    POSSESSIVES,
    SUBJECT_PRONOUNS,
    TIME_ADVERBS,
    VERBS,
    Adjective,
    Noun,
    Verb,
)
from fedq.errors import FedqError

MAX_WORDS = 25
MIN_WORDS = 3


class DemoCorpusError(FedqError):
    """Bad size or seed for the demo corpus."""


# --- inflection tables: case -> gender (m/f/n, pl for plural) -> form ----------------------------

DEFINITE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
EIN_ENDINGS = {  # ein, kein and the possessives
    "nom": {"m": "", "f": "e", "n": "", "pl": "e"},
    "acc": {"m": "en", "f": "e", "n": "", "pl": "e"},
    "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"},
}
WEAK = {  # adjective after der/die/das
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
MIXED = {  # adjective after ein/kein/mein
    "nom": {"m": "er", "f": "e", "n": "es", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "es", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
STRONG = {  # adjective without an inflected article (zwei rote Äpfel)
    "nom": {"m": "er", "f": "e", "n": "es", "pl": "e"},
    "acc": {"m": "en", "f": "e", "n": "es", "pl": "e"},
    "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"},
}

NOUN = {noun.de: noun for noun in NOUNS}
ADJECTIVE = {adjective.de: adjective for adjective in ADJECTIVES}
VERB = {verb.de: verb for verb in VERBS}


@dataclass(frozen=True)
class Phrase:
    de: str
    en: str


# --- words -----------------------------------------------------------------------------------

def decline_adjective(stem: str, ending: str) -> str:
    """müde + en -> müden (no doubled e)."""
    if stem.endswith("e") and ending.startswith("e"):
        return stem + ending[1:]
    return stem + ending


def conjugate(verb: Verb, person: int) -> str:
    """German present tense; person 0..5 = ich, du, er/sie/es, wir, ihr, sie. Without the separable prefix."""
    if verb.forms:
        return verb.forms[person]
    if verb.stem_change and person in (1, 2):
        return verb.stem_change[person - 1]
    infinitive = verb.de[len(verb.prefix):]
    if person in (3, 5):
        return infinitive
    stem = infinitive[:-2]
    needs_e = stem[-1] in "td" or (stem[-1] in "mn" and stem[-2] not in "aeiouäöülrmnh")
    if stem.endswith("chn"):  # zeichnen -> zeichnest
        needs_e = True
    if person == 0:
        return stem + "e"
    if person == 1:
        if needs_e:
            return stem + "est"
        return stem + ("t" if stem[-1] in "sßzx" else "st")
    return stem + ("et" if needs_e else "t")


def english_third_person(base: str) -> str:
    """see -> sees, watch -> watches, carry -> carries; only the first word of a phrasal verb changes."""
    word, _, rest = base.partition(" ")
    if word.endswith(("s", "sh", "ch", "x", "z", "o")):
        word += "es"
    elif word.endswith("y") and word[-2] not in "aeiou":
        word = word[:-1] + "ies"
    else:
        word += "s"
    return f"{word} {rest}" if rest else word


def indefinite_article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


# --- phrases ---------------------------------------------------------------------------------

def noun_phrase(noun: Noun, case: str, det: str = "def", adjective: Adjective | None = None,
                plural: bool = False) -> Phrase:
    """A German noun phrase in ``case`` (nom/acc/dat) with its English translation.

    ``det``: def | indef | kein | bare | a possessive (mein, dein, sein, unser) | a number (zwei..zehn).
    Bare and number phrases are always plural.
    """
    plural = plural or det == "bare" or det in NUMBERS
    gender = "pl" if plural else noun.gender
    if det == "def":
        article, endings, en_det = DEFINITE[case][gender], WEAK, "the"
    elif det == "indef":
        article, endings, en_det = "ein" + EIN_ENDINGS[case][gender], MIXED, "a"
    elif det == "kein" or det in POSSESSIVES:
        article, endings = det + EIN_ENDINGS[case][gender], MIXED
        en_det = "no" if det == "kein" else POSSESSIVES[det]
    else:
        article, endings, en_det = (det, STRONG, NUMBERS[det]) if det in NUMBERS else ("", STRONG, "")
    if plural:
        de_noun, en_noun = noun.de_plural, noun.en_plural
        if case == "dat" and de_noun[-1] not in "ns":
            de_noun += "n"
    else:
        de_noun, en_noun = (noun.de if case == "nom" else noun.de_oblique), noun.en
    de_words = [article] if article else []
    en_words = [en_noun]
    if adjective:
        de_words.append(decline_adjective(adjective.de, endings[case][gender]))
        en_words.insert(0, adjective.en)
    de_words.append(de_noun)
    if det == "indef":
        en_det = indefinite_article(en_words[0])
    if en_det:
        en_words.insert(0, en_det)
    return Phrase(" ".join(de_words), " ".join(en_words))


def prepositional_phrase(preposition: str, english: str, phrase: Phrase) -> Phrase:
    """Preposition + dative phrase; in + dem contracts to im."""
    if preposition == "in" and phrase.de.startswith("dem "):
        return Phrase("im " + phrase.de[4:], f"{english} {phrase.en}")
    return Phrase(f"{preposition} {phrase.de}", f"{english} {phrase.en}")


# --- clauses ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clause:
    subject: Phrase
    person: int  # 0..5: ich, du, er/sie/es, wir, ihr, sie
    verb: Verb
    tense: str = "present"  # present | perfect | können | wollen | müssen
    objects: tuple[Phrase, ...] = ()  # dative before accusative, the order of both languages
    predicate: Phrase | None = None  # complement of the copula: adjective or place
    negated: bool = False
    adverb: Phrase | None = None
    frequency: bool = False  # the adverb is a frequency adverb (English puts it before the verb)
    place: Phrase | None = None  # prepositional phrase


def _german_verb(clause: Clause) -> tuple[str, list[str], str]:
    """(finite verb of a main clause, words at the end of a main clause, verb cluster closing a subordinate clause)."""
    verb, person = clause.verb, clause.person
    if clause.tense == "present":
        finite = conjugate(verb, person)
        return finite, [verb.prefix] if verb.prefix else [], verb.prefix + finite
    if clause.tense == "perfect":
        finite = conjugate(AUXILIARIES[verb.aux], person)
        return finite, [verb.participle], f"{verb.participle} {finite}"
    finite = MODALS[clause.tense][0][person]
    return finite, [verb.de], f"{verb.de} {finite}"


def _german_middle(clause: Clause, front: str) -> list[str]:
    words = [clause.adverb.de] if clause.adverb and front != "adverb" else []
    words += [phrase.de for phrase in clause.objects]
    if clause.negated:
        words.append("nicht")
    if clause.place and front != "place":
        words.append(clause.place.de)
    if clause.predicate:
        words.append(clause.predicate.de)
    return words


def german_main(clause: Clause, front: str = "subject", lead: str = "") -> str:
    """Verb-second main clause. ``front`` (subject | adverb | place) opens it, or ``lead`` (a subordinate clause)."""
    finite, tail, _ = _german_verb(clause)
    if lead:
        head = [lead + ",", finite, clause.subject.de]
    elif front == "subject":
        head = [clause.subject.de, finite]
    else:
        fronted = clause.adverb if front == "adverb" else clause.place
        assert fronted is not None  # a clause is fronted by a part it has (clause_variants)
        head = [fronted.de, finite, clause.subject.de]
    return " ".join(head + _german_middle(clause, front) + tail)


def german_subordinate(clause: Clause, conjunction: str) -> str:
    """Verb-final subordinate clause: weil der Mann den Hund gesehen hat."""
    return " ".join([conjunction, clause.subject.de] + _german_middle(clause, "subject") + [_german_verb(clause)[2]])


def _english_verb(clause: Clause) -> list[str]:
    verb, person, tense, negated = clause.verb, clause.person, clause.tense, clause.negated
    third = person == 2
    if tense in MODALS:
        _, affirmative, negative = MODALS[tense]
        forms = negative if negated else affirmative
        assert forms is not None  # a modal without a negative form (muessen) is never negated
        words = forms[third].split() + verb.en.split()
    elif verb is COPULA:
        if tense == "present":
            be = ("am", "are", "is", "are", "are", "are")[person]
        else:
            be = "was" if person in (0, 2) else "were"
        words = [be, "not"] if negated else [be]
    elif negated:
        do = ("does" if third else "do") if tense == "present" else "did"
        words = [do, "not"] + verb.en.split()
    elif tense == "present":
        words = (english_third_person(verb.en) if third else verb.en).split()
    else:
        words = verb.en_past.split()
    if clause.frequency:
        assert clause.adverb is not None  # a frequency adverb is the clause's adverb
        position = 1 if words[0] in ("am", "is", "are", "was", "were", "can", "must") else 0
        words.insert(position, clause.adverb.en)
    return words


def english_clause(clause: Clause, front: str = "subject") -> str:
    words = [clause.subject.en] + _english_verb(clause) + [phrase.en for phrase in clause.objects]
    if clause.predicate:
        words.append(clause.predicate.en)
    if clause.place and front != "place":
        words.append(clause.place.en)
    if clause.adverb and not clause.frequency and front != "adverb":
        words.append(clause.adverb.en)
    if front == "adverb" and clause.adverb is not None:
        words.insert(0, clause.adverb.en)
    elif front == "place" and clause.place is not None:
        words.insert(0, clause.place.en + ",")
    return " ".join(words)


# --- random sampling -------------------------------------------------------------------------

# (determiner, plural) pools: repeated entries act as weights; "poss"/"num" pick the word afterwards
SUBJECT_DETS = (("def", False),) * 5 + (("indef", False),) * 2 + (
    ("poss", False), ("def", True), ("def", True), ("num", True), ("bare", True))
OBJECT_DETS = (("def", False),) * 4 + (("indef", False),) * 3 + (
    ("poss", False), ("kein", False), ("def", True), ("num", True), ("num", True), ("bare", True))
DEFINITE_DETS = (("def", False),) * 4 + (("poss", False), ("def", True))  # objects of a negated verb, recipients
PLACE_DETS = (("def", False),) * 6 + (("indef", False), ("indef", False), ("poss", False), ("def", True))
ALL_TENSES = ("present",) * 5 + ("perfect",) * 3 + tuple(MODALS)
PRESENT_TENSES = ("present",) * 5 + tuple(MODALS)  # wenn-clauses: "when" with a past event reads wrong
MOVABLE = "PAFTV"  # what can be somewhere: "the ball is under the table"
_VERBS_BY_KIND = {kind: tuple(v for v in VERBS if v.kind == kind) for kind in ("tr", "intr", "ditr", "say")}
_NOUNS_BY_TAGS: dict[str, tuple[Noun, ...]] = {}
_ADJECTIVES_BY_TAGS: dict[str, tuple[Adjective, ...]] = {}


def _nouns_for(tags: str) -> tuple[Noun, ...]:
    """Nouns sharing a tag with ``tags`` (cached: sampling calls this for every phrase)."""
    if tags not in _NOUNS_BY_TAGS:
        _NOUNS_BY_TAGS[tags] = tuple(noun for noun in NOUNS if set(noun.tags) & set(tags))
    return _NOUNS_BY_TAGS[tags]


def _adjectives_for(tags: str) -> tuple[Adjective, ...]:
    if tags not in _ADJECTIVES_BY_TAGS:
        _ADJECTIVES_BY_TAGS[tags] = tuple(a for a in ADJECTIVES if set(a.tags) & set(tags))
    return _ADJECTIVES_BY_TAGS[tags]


def _sample_np(rng: random.Random, tags: str, case: str, dets: tuple) -> tuple[Phrase, Noun, bool]:
    noun = rng.choice(_nouns_for(tags))
    det, plural = rng.choice(dets)
    if det == "poss":
        det = rng.choice(tuple(POSSESSIVES))
    elif det == "num":
        det = rng.choice(tuple(NUMBERS))
    adjective = rng.choice(_adjectives_for(noun.tags)) if rng.random() < 0.4 else None
    return noun_phrase(noun, case, det, adjective, plural), noun, plural or det == "bare" or det in NUMBERS


def _sample_subject(rng: random.Random, tags: str) -> tuple[Phrase, int, str]:
    """(subject, person, noun tags of the subject)."""
    r = rng.random()
    if r < 0.25:
        de, en, person, tag = rng.choice([p for p in SUBJECT_PRONOUNS if p[3] in tags])
        return Phrase(de, en), person, tag
    if r < 0.35 and "P" in tags:
        name = rng.choice(NAMES)
        return Phrase(name, name), 2, "P"
    phrase, noun, plural = _sample_np(rng, tags, "nom", SUBJECT_DETS)
    return phrase, 5 if plural else 2, noun.tags


def _sample_place(rng: random.Random, subject_tags: str) -> Phrase:
    if "P" in subject_tags and rng.random() < 0.3:
        preposition, english, tags = COMITATIVE
    else:
        preposition, english, tags = rng.choice(LOCATIVE_PREPOSITIONS)
    return prepositional_phrase(preposition, english, _sample_np(rng, tags, "dat", PLACE_DETS)[0])


def _sample_clause(rng: random.Random, tenses: tuple[str, ...], rich: bool = True) -> Clause:
    r = rng.random()
    kind = "cop" if r < 0.11 else "cop-place" if r < 0.22 else "intr" if r < 0.44 else "ditr" if r < 0.54 else "tr"
    verb = COPULA if kind.startswith("cop") else rng.choice(_VERBS_BY_KIND[kind])
    subject, person, subject_tags = _sample_subject(rng, MOVABLE if kind == "cop-place" else verb.subject_tags)
    tense = rng.choice(tenses)
    if tense in MODALS and (verb is COPULA or not set(subject_tags) & set("PA")):
        tense = "present"  # only people and animals can, want or must
    negated = rng.random() < 0.15 and tense != "müssen"
    objects: tuple[Phrase, ...] = ()
    predicate = place = None
    pronoun_object = False
    object_dets = DEFINITE_DETS if negated else OBJECT_DETS
    if kind == "tr":
        pronouns = [p for p in OBJECT_PRONOUNS if p[2] != person or person == 2]
        if "P" in verb.object_tags and rng.random() < 0.12:
            de, en, _ = rng.choice(pronouns)
            objects, pronoun_object = (Phrase(de, en),), True
        else:
            objects = (_sample_np(rng, verb.object_tags, "acc", object_dets)[0],)
    elif kind == "ditr":
        objects = (_sample_np(rng, verb.dative_tags, "dat", DEFINITE_DETS)[0],
                   _sample_np(rng, verb.object_tags, "acc", object_dets)[0])
    elif kind == "cop":
        adjective = rng.choice(_adjectives_for(subject_tags))
        predicate = Phrase(adjective.de, adjective.en)
    elif kind == "cop-place":
        predicate = _sample_place(rng, "")
    if rich and kind in ("tr", "intr") and rng.random() < 0.35:
        place = _sample_place(rng, subject_tags)
    adverb, frequency = None, False
    if not pronoun_object and rng.random() < 0.3:
        group = "modal" if tense in MODALS else tense
        if negated or rng.random() < 0.6:
            de, en, _ = rng.choice([a for a in TIME_ADVERBS if group in a[2]])
        else:
            (de, en), frequency = rng.choice(FREQUENCY_ADVERBS), True
        adverb = Phrase(de, en)
    return Clause(subject, person, verb, tense, objects, predicate, negated, adverb, frequency, place)


def _front(rng: random.Random, clause: Clause) -> str:
    if clause.adverb and not clause.frequency and rng.random() < 0.4:
        return "adverb"
    if clause.place and rng.random() < 0.25:
        return "place"
    return "subject"


def sample_sentence(rng: random.Random) -> tuple[str, str]:
    """One (german, english) sentence pair, without capitalization and final period."""
    r = rng.random()
    if r < 0.55:
        clause = _sample_clause(rng, ALL_TENSES)
        front = _front(rng, clause)
        return german_main(clause, front), english_clause(clause, front)
    conjunction = rng.choice(tuple(CONJUNCTIONS))
    tenses = PRESENT_TENSES if conjunction == "wenn" else ALL_TENSES
    main, sub = _sample_clause(rng, tenses, rich=False), _sample_clause(rng, tenses, rich=False)
    if r < 0.72:
        de = f"{german_main(main)}, {german_subordinate(sub, conjunction)}"
        return de, f"{english_clause(main)} {CONJUNCTIONS[conjunction]} {english_clause(sub)}"
    if r < 0.86:
        de = german_main(main, lead=german_subordinate(sub, conjunction))
        return de, f"{CONJUNCTIONS[conjunction]} {english_clause(sub)}, {english_clause(main)}"
    verb = rng.choice(_VERBS_BY_KIND["say"])
    subject, person, _ = _sample_subject(rng, verb.subject_tags)
    matrix = Clause(subject, person, verb)
    de = f"{german_main(matrix)}, {german_subordinate(sub, 'dass')}"
    return de, f"{english_clause(matrix)} that {english_clause(sub)}"


def _finish(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def build_demo_corpus(train_size: int = 24000, eval_size: int = 1000, seed: int = 1
                      ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (train, valid, test) lists of (german, english) pairs; valid and test have eval_size pairs each.

    Every German sentence occurs once in the whole corpus, so the three splits are disjoint.
    """
    if train_size < 1 or eval_size < 1:
        raise DemoCorpusError(f"demo corpus sizes must be positive, got train={train_size} eval={eval_size}")
    needed = train_size + 2 * eval_size
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for _ in range(20 * needed):
        de, en = sample_sentence(rng)
        if de in seen or not MIN_WORDS <= len(de.split()) <= MAX_WORDS or len(en.split()) > MAX_WORDS:
            continue
        seen.add(de)
        pairs.append((_finish(de), _finish(en)))
        if len(pairs) == needed:
            break
    else:
        raise DemoCorpusError(f"the demo grammar cannot produce {needed} distinct sentences")
    rng.shuffle(pairs)
    return pairs[:train_size], pairs[train_size:train_size + eval_size], pairs[train_size + eval_size:]
