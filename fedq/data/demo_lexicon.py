"""Lexicon of the built-in German–English demo corpus (see ``fedq.data.demo``).

Semantic tags decide which words may combine, so that generated sentences stay
plausible ("the woman eats an apple", never "the apple eats a woman"):

    P person   A animal   F food   T portable thing   O can be opened
    R can be read   V vehicle   L place ("in")   S landmark ("next to", "behind")
    N surface ("on")   U something to be under
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Noun:
    gender: str  # m | f | n
    de: str
    de_plural: str
    en: str
    en_plural: str
    tags: str
    de_oblique: str  # accusative/dative singular: differs for weak masculines (den Jungen)


@dataclass(frozen=True)
class Adjective:
    de: str  # stem, takes the declension ending
    en: str
    tags: str  # nouns it may describe


@dataclass(frozen=True)
class Verb:
    de: str  # infinitive, with its separable prefix
    participle: str
    en: str  # base form, may be phrasal ("look for")
    en_past: str
    kind: str  # tr | intr | ditr | cop | say
    subject_tags: str
    object_tags: str = ""  # accusative object
    dative_tags: str = ""  # ditransitive: recipient
    aux: str = "haben"  # perfect auxiliary
    prefix: str = ""  # separable prefix (an-rufen)
    stem_change: tuple[str, str] | None = None  # du / er forms (siehst, sieht)
    forms: tuple[str, ...] | None = None  # all six present forms, for irregular verbs


def _nouns(table: str) -> tuple[Noun, ...]:
    rows = [[cell.strip() for cell in line.split("|")] for line in table.strip().splitlines()]
    return tuple(Noun(g, sg, pl, en, en_pl, tags, weak or sg) for g, sg, pl, en, en_pl, tags, weak in rows)


def _adjectives(table: str) -> tuple[Adjective, ...]:
    rows = [[cell.strip() for cell in line.split("|")] for line in table.strip().splitlines()]
    return tuple(Adjective(de, en, tags) for de, en, tags in rows)


# gender | singular | plural | English | English plural | tags | weak acc/dat singular
NOUNS = _nouns("""
m | Mann        | Männer       | man           | men            | P |
f | Frau        | Frauen       | woman         | women          | P |
n | Kind        | Kinder       | child         | children       | P |
m | Junge       | Jungen       | boy           | boys           | P | Jungen
n | Mädchen     | Mädchen      | girl          | girls          | P |
m | Lehrer      | Lehrer       | teacher       | teachers       | P |
m | Arzt        | Ärzte        | doctor        | doctors        | P |
m | Freund      | Freunde      | friend        | friends        | P |
m | Koch        | Köche        | cook          | cooks          | P |
m | Bauer       | Bauern       | farmer        | farmers        | P | Bauern
m | Polizist    | Polizisten   | police officer | police officers | P | Polizisten
m | Künstler    | Künstler     | artist        | artists        | P |
m | Ingenieur   | Ingenieure   | engineer      | engineers      | P |
f | Großmutter  | Großmütter   | grandmother   | grandmothers   | P |
m | Großvater   | Großväter    | grandfather   | grandfathers   | P |
f | Schwester   | Schwestern   | sister        | sisters        | P |
m | Bruder      | Brüder       | brother       | brothers       | P |
m | Student     | Studenten    | student       | students       | P | Studenten
m | Nachbar     | Nachbarn     | neighbor      | neighbors      | P | Nachbarn
n | Baby        | Babys        | baby          | babies         | P |
f | Tänzerin    | Tänzerinnen  | dancer        | dancers        | P |
f | Sängerin    | Sängerinnen  | singer        | singers        | P |
m | Hund        | Hunde        | dog           | dogs           | A |
f | Katze       | Katzen       | cat           | cats           | A |
n | Pferd       | Pferde       | horse         | horses         | A |
m | Vogel       | Vögel        | bird          | birds          | A |
f | Maus        | Mäuse        | mouse         | mice           | A |
f | Kuh         | Kühe         | cow           | cows           | A |
m | Elefant     | Elefanten    | elephant      | elephants      | A | Elefanten
f | Eule        | Eulen        | owl           | owls           | A |
n | Kaninchen   | Kaninchen    | rabbit        | rabbits        | A |
m | Affe        | Affen        | monkey        | monkeys        | A | Affen
m | Bär         | Bären        | bear          | bears          | A | Bären
m | Löwe        | Löwen        | lion          | lions          | A | Löwen
f | Ente        | Enten        | duck          | ducks          | A |
n | Schwein     | Schweine     | pig           | pigs           | A |
f | Ziege       | Ziegen       | goat          | goats          | A |
m | Apfel       | Äpfel        | apple         | apples         | F |
f | Banane      | Bananen      | banana        | bananas        | F |
m | Kuchen      | Kuchen       | cake          | cakes          | F |
n | Ei          | Eier         | egg           | eggs           | F |
f | Orange      | Orangen      | orange        | oranges        | F |
f | Birne       | Birnen       | pear          | pears          | F |
f | Tomate      | Tomaten      | tomato        | tomatoes       | F |
f | Karotte     | Karotten     | carrot        | carrots        | F |
m | Keks        | Kekse        | cookie        | cookies        | F |
f | Pizza       | Pizzen       | pizza         | pizzas         | F |
f | Wurst       | Würste       | sausage       | sausages       | F |
f | Zitrone     | Zitronen     | lemon         | lemons         | F |
n | Brötchen    | Brötchen     | bread roll    | bread rolls    | F |
m | Ball        | Bälle        | ball          | balls          | T |
n | Buch        | Bücher       | book          | books          | TRO |
m | Brief       | Briefe       | letter        | letters        | TRO |
m | Schlüssel   | Schlüssel    | key           | keys           | T |
f | Tasche      | Taschen      | bag           | bags           | TO |
f | Lampe       | Lampen       | lamp          | lamps          | T |
f | Flasche     | Flaschen     | bottle        | bottles        | TO |
f | Tasse       | Tassen       | cup           | cups           | T |
f | Uhr         | Uhren        | clock         | clocks         | T |
m | Hut         | Hüte         | hat           | hats           | T |
m | Schuh       | Schuhe       | shoe          | shoes          | T |
m | Regenschirm | Regenschirme | umbrella      | umbrellas      | TO |
n | Bild        | Bilder       | picture       | pictures       | T |
f | Blume       | Blumen       | flower        | flowers        | T |
f | Zeitung     | Zeitungen    | newspaper     | newspapers     | TR |
n | Messer      | Messer       | knife         | knives         | T |
n | Geschenk    | Geschenke    | gift          | gifts          | TO |
f | Kiste       | Kisten       | box           | boxes          | TO |
m | Stift       | Stifte       | pen           | pens           | T |
n | Handy       | Handys       | phone         | phones         | T |
f | Jacke       | Jacken       | jacket        | jackets        | T |
m | Koffer      | Koffer       | suitcase      | suitcases      | TO |
n | Auto        | Autos        | car           | cars           | VS |
n | Fahrrad     | Fahrräder    | bicycle       | bicycles       | VS |
m | Bus         | Busse        | bus           | buses          | VS |
m | Zug         | Züge         | train         | trains         | VS |
n | Boot        | Boote        | boat          | boats          | VS |
m | Park        | Parks        | park          | parks          | L |
m | Garten      | Gärten       | garden        | gardens        | L |
n | Haus        | Häuser       | house         | houses         | LS |
f | Küche       | Küchen       | kitchen       | kitchens       | L |
f | Schule      | Schulen      | school        | schools        | LS |
m | Wald        | Wälder       | forest        | forests        | L |
f | Stadt       | Städte       | city          | cities         | L |
n | Zimmer      | Zimmer       | room          | rooms          | L |
n | Büro        | Büros        | office        | offices        | L |
n | Dorf        | Dörfer       | village       | villages       | L |
m | Bahnhof     | Bahnhöfe     | station       | stations       | LS |
f | Kirche      | Kirchen      | church        | churches       | LS |
m | Tisch       | Tische       | table         | tables         | SNU |
m | Stuhl       | Stühle       | chair         | chairs         | SNU |
n | Bett        | Betten       | bed           | beds           | SNU |
n | Sofa        | Sofas        | sofa          | sofas          | SNU |
m | Baum        | Bäume        | tree          | trees          | SU |
f | Brücke      | Brücken      | bridge        | bridges        | SNU |
n | Fenster     | Fenster      | window        | windows        | SO |
f | Tür         | Türen        | door          | doors          | SO |
f | Mauer       | Mauern       | wall          | walls          | SN |
""")

# stem | English | tags of the nouns it may describe
ADJECTIVES = _adjectives("""
klein      | small     | PAFTVLSN
groß       | big       | PAFTVLS
alt        | old       | PATVLS
jung       | young     | PA
neu        | new       | TVLS
rot        | red       | FTVS
blau       | blue      | TVS
grün       | green     | FTVS
gelb       | yellow    | FTVS
schwarz    | black     | ATVS
weiß       | white     | ATVS
braun      | brown     | ATS
schön      | beautiful | PATVLS
müde       | tired     | PA
hungrig    | hungry    | PA
glücklich  | happy     | PA
traurig    | sad       | PA
wütend     | angry     | PA
freundlich | friendly  | PA
lustig     | funny     | PA
klug       | clever    | PA
schnell    | fast      | AV
langsam    | slow      | AV
leer       | empty     | L
schwer     | heavy     | T
frisch     | fresh     | F
süß        | sweet     | F
kalt       | cold      | FL
warm       | warm      | FL
billig     | cheap     | TV
laut       | loud      | PAV
sauber     | clean     | TVLS
schmutzig  | dirty     | ATVLS
""")

ANY = "PAFTVLS"

VERBS = (
    Verb("sehen", "gesehen", "see", "saw", "tr", "PA", ANY, stem_change=("siehst", "sieht")),
    Verb("essen", "gegessen", "eat", "ate", "tr", "PA", "F", stem_change=("isst", "isst")),
    Verb("kaufen", "gekauft", "buy", "bought", "tr", "P", "FTV"),
    Verb("suchen", "gesucht", "look for", "looked for", "tr", "PA", "PATFV"),
    Verb("finden", "gefunden", "find", "found", "tr", "PA", "ATF"),
    Verb("tragen", "getragen", "carry", "carried", "tr", "P", "TF", stem_change=("trägst", "trägt")),
    Verb("halten", "gehalten", "hold", "held", "tr", "P", "TFA", stem_change=("hältst", "hält")),
    Verb("malen", "gemalt", "paint", "painted", "tr", "P", ANY),
    Verb("waschen", "gewaschen", "wash", "washed", "tr", "P", "ATV", stem_change=("wäschst", "wäscht")),
    Verb("öffnen", "geöffnet", "open", "opened", "tr", "P", "O"),
    Verb("lesen", "gelesen", "read", "read", "tr", "P", "R", stem_change=("liest", "liest")),
    Verb("schreiben", "geschrieben", "write", "wrote", "tr", "P", "R"),
    Verb("brauchen", "gebraucht", "need", "needed", "tr", "PA", "TFV"),
    Verb("mögen", "gemocht", "like", "liked", "tr", "PA", ANY,
         forms=("mag", "magst", "mag", "mögen", "mögt", "mögen")),
    Verb("lieben", "geliebt", "love", "loved", "tr", "P", "PAF"),
    Verb("besuchen", "besucht", "visit", "visited", "tr", "P", "PL"),
    Verb("anrufen", "angerufen", "call", "called", "tr", "P", "P", prefix="an"),
    Verb("abholen", "abgeholt", "pick up", "picked up", "tr", "P", "PT", prefix="ab"),
    Verb("anschauen", "angeschaut", "look at", "looked at", "tr", "PA", ANY, prefix="an"),
    Verb("einpacken", "eingepackt", "pack", "packed", "tr", "P", "TF", prefix="ein"),
    Verb("fangen", "gefangen", "catch", "caught", "tr", "PA", "A", stem_change=("fängst", "fängt")),
    Verb("füttern", "gefüttert", "feed", "fed", "tr", "P", "A",
         forms=("füttere", "fütterst", "füttert", "füttern", "füttert", "füttern")),
    Verb("zeichnen", "gezeichnet", "draw", "drew", "tr", "P", ANY),
    Verb("verkaufen", "verkauft", "sell", "sold", "tr", "P", "FTV"),
    Verb("kochen", "gekocht", "cook", "cooked", "tr", "P", "F"),
    Verb("vergessen", "vergessen", "forget", "forgot", "tr", "P", "T", stem_change=("vergisst", "vergisst")),
    Verb("verlieren", "verloren", "lose", "lost", "tr", "P", "T"),
    Verb("reparieren", "repariert", "repair", "repaired", "tr", "P", "TV"),
    Verb("hören", "gehört", "hear", "heard", "tr", "PA", "PA"),
    Verb("nehmen", "genommen", "take", "took", "tr", "P", "TF", stem_change=("nimmst", "nimmt")),
    Verb("fotografieren", "fotografiert", "photograph", "photographed", "tr", "P", ANY),
    Verb("beobachten", "beobachtet", "watch", "watched", "tr", "PA", "PA"),
    Verb("geben", "gegeben", "give", "gave", "ditr", "P", "TF", "PA", stem_change=("gibst", "gibt")),
    Verb("zeigen", "gezeigt", "show", "showed", "ditr", "P", "ATFV", "P"),
    Verb("bringen", "gebracht", "bring", "brought", "ditr", "P", "TF", "P"),
    Verb("schicken", "geschickt", "send", "sent", "ditr", "P", "T", "P"),
    Verb("schlafen", "geschlafen", "sleep", "slept", "intr", "PA", stem_change=("schläfst", "schläft")),
    Verb("laufen", "gelaufen", "run", "ran", "intr", "PA", aux="sein", stem_change=("läufst", "läuft")),
    Verb("lachen", "gelacht", "laugh", "laughed", "intr", "P"),
    Verb("spielen", "gespielt", "play", "played", "intr", "PA"),
    Verb("warten", "gewartet", "wait", "waited", "intr", "PA"),
    Verb("schwimmen", "geschwommen", "swim", "swam", "intr", "PA", aux="sein"),
    Verb("tanzen", "getanzt", "dance", "danced", "intr", "P"),
    Verb("singen", "gesungen", "sing", "sang", "intr", "P"),
    Verb("arbeiten", "gearbeitet", "work", "worked", "intr", "P"),
    Verb("sitzen", "gesessen", "sit", "sat", "intr", "PA"),
    Verb("kommen", "gekommen", "come", "came", "intr", "PA", aux="sein"),
    Verb("weinen", "geweint", "cry", "cried", "intr", "P"),
    Verb("springen", "gesprungen", "jump", "jumped", "intr", "PA", aux="sein"),
    Verb("stehen", "gestanden", "stand", "stood", "intr", "PA"),
    Verb("sagen", "gesagt", "say", "said", "say", "P"),
    Verb("glauben", "geglaubt", "believe", "believed", "say", "P"),
    Verb("hoffen", "gehofft", "hope", "hoped", "say", "P"),
    Verb("wissen", "gewusst", "know", "knew", "say", "P",
         forms=("weiß", "weißt", "weiß", "wissen", "wisst", "wissen")),
)

COPULA = Verb("sein", "gewesen", "be", "was", "cop", ANY, aux="sein",
              forms=("bin", "bist", "ist", "sind", "seid", "sind"))
AUXILIARIES = {
    "haben": Verb("haben", "gehabt", "have", "had", "aux", "", forms=("habe", "hast", "hat", "haben", "habt", "haben")),
    "sein": COPULA,
}
# German modal -> six present forms, English affirmative and negated forms for (other persons, third singular)
MODALS = {
    "können": (("kann", "kannst", "kann", "können", "könnt", "können"), ("can", "can"), ("cannot", "cannot")),
    "wollen": (("will", "willst", "will", "wollen", "wollt", "wollen"), ("want to", "wants to"),
               ("do not want to", "does not want to")),
    "müssen": (("muss", "musst", "muss", "müssen", "müsst", "müssen"), ("must", "must"), None),
}

# German, English, person index (0 ich .. 5 sie/they), the noun tag the pronoun stands for
SUBJECT_PRONOUNS = (
    ("ich", "I", 0, "P"), ("du", "you", 1, "P"), ("er", "he", 2, "P"), ("sie", "she", 2, "P"),
    ("es", "it", 2, "A"), ("wir", "we", 3, "P"), ("ihr", "you", 4, "P"), ("sie", "they", 5, "P"),
)
OBJECT_PRONOUNS = (("mich", "me", 0), ("dich", "you", 1), ("ihn", "him", 2), ("uns", "us", 3), ("euch", "you", 4))
NAMES = ("Anna", "Lena", "Paul", "Max", "Tom", "Sophie", "Ben", "Emma", "Lukas", "Mia")
POSSESSIVES = {"mein": "my", "dein": "your", "sein": "his", "unser": "our"}
NUMBERS = {"zwei": "two", "drei": "three", "vier": "four", "fünf": "five", "sechs": "six",
           "sieben": "seven", "acht": "eight", "neun": "nine", "zehn": "ten"}

# German, English, noun tags of the object of the preposition (all take the dative here)
LOCATIVE_PREPOSITIONS = (
    ("in", "in", "L"), ("auf", "on", "N"), ("unter", "under", "U"),
    ("neben", "next to", "S"), ("hinter", "behind", "S"), ("vor", "in front of", "S"),
)
COMITATIVE = ("mit", "with", "PA")

# German, English, tenses it fits (time adverbs may open the sentence; frequency adverbs stay inside)
TIME_ADVERBS = (
    ("heute", "today", ("present", "perfect", "modal")), ("gestern", "yesterday", ("perfect",)),
    ("morgen", "tomorrow", ("present", "modal")), ("jetzt", "now", ("present", "modal")),
    ("am Abend", "in the evening", ("present", "perfect", "modal")),
    ("am Morgen", "in the morning", ("present", "perfect", "modal")),
)
FREQUENCY_ADVERBS = (("oft", "often"), ("immer", "always"), ("manchmal", "sometimes"), ("selten", "rarely"))

CONJUNCTIONS = {"weil": "because", "obwohl": "although", "während": "while", "bevor": "before", "wenn": "when"}
