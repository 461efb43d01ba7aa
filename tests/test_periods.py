"""The composer -> period table (deepj/corpus/periods.py, composers.tsv): every ATEPP composer and GiantMIDI-Piano's
most recorded resolve; colliding surnames get distinct slugs; spelling variants meet; MAESTRO's styles do not change;
overrides by full name and by slug; unknown names."""

from __future__ import annotations

import configparser
import csv
import json
from pathlib import Path

import pytest

from deepj.corpus.periods import (
    COMPOSER_PERIODS,
    COMPOSERS,
    PERIODS,
    UNKNOWN_PERIOD,
    Composer,
    PeriodsError,
    PeriodTable,
    composer_slug,
    load_periods,
    read_table,
)

REPO = Path(__file__).resolve().parents[1]
MAESTRO_CSV = REPO.parent / "shared" / "data" / "maestro" / "maestro-v3.0.0.csv"
if not MAESTRO_CSV.is_file():  # the checkout may live elsewhere; the shared data folder does not move
    MAESTRO_CSV = Path("/work/shared/data/maestro/maestro-v3.0.0.csv")

# Every composer name of MAESTRO v3.0.0 (each side of a "/") and its style before the table grew: these must not change.
MAESTRO_STYLES = {
    "Alban Berg": "modern/berg", "Alexander Scriabin": "romantic/scriabin", "Alfred Grünfeld": "romantic/grunfeld",
    "Antonio Soler": "baroque/soler", "Camille Saint-Saëns": "romantic/saint-saens",
    "Carl Maria von Weber": "romantic/weber", "Charles Gounod": "romantic/gounod", "Claude Debussy": "romantic/debussy",
    "César Franck": "romantic/franck", "Domenico Scarlatti": "baroque/scarlatti", "Edvard Grieg": "romantic/grieg",
    "Egon Petri": "modern/petri", "Felix Mendelssohn": "romantic/mendelssohn", "Ferruccio Busoni": "romantic/busoni",
    "Franz Liszt": "romantic/liszt", "Franz Schubert": "romantic/schubert", "Fritz Kreisler": "romantic/kreisler",
    "Frédéric Chopin": "romantic/chopin", "George Enescu": "modern/enescu", "George Frideric Handel": "baroque/handel",
    "Georges Bizet": "romantic/bizet", "Giuseppe Verdi": "romantic/verdi", "György Cziffra": "modern/cziffra",
    "Henry Purcell": "baroque/purcell", "Isaac Albéniz": "romantic/albeniz", "Jean-Philippe Rameau": "baroque/rameau",
    "Johann Christian Fischer": "classical/fischer", "Johann Pachelbel": "baroque/pachelbel",
    "Johann Sebastian Bach": "baroque/bach", "Johann Strauss": "romantic/strauss", "Johannes Brahms": "romantic/brahms",
    "Joseph Haydn": "classical/haydn", "Leopold Godowsky": "romantic/godowsky", "Leoš Janáček": "modern/janacek",
    "Ludwig van Beethoven": "classical/beethoven", "Mikhail Glinka": "romantic/glinka",
    "Mikhail Pletnev": "modern/pletnev", "Mily Balakirev": "romantic/balakirev",
    "Modest Mussorgsky": "romantic/mussorgsky", "Moritz Moszkowski": "romantic/moszkowski",
    "Muzio Clementi": "classical/clementi", "Myra Hess": "modern/hess", "Niccolò Paganini": "romantic/paganini",
    "Nikolai Medtner": "romantic/medtner", "Nikolai Rimsky-Korsakov": "romantic/rimsky-korsakov",
    "Orlando Gibbons": "baroque/gibbons", "Percy Grainger": "modern/grainger",
    "Pyotr Ilyich Tchaikovsky": "romantic/tchaikovsky", "Richard Wagner": "romantic/wagner",
    "Robert Schumann": "romantic/schumann", "Sergei Rachmaninoff": "romantic/rachmaninoff",
    "Vladimir Horowitz": "modern/horowitz", "Vyacheslav Gryaznov": "modern/gryaznov",
    "Wolfgang Amadeus Mozart": "classical/mozart",
}

# GiantMIDI-Piano (10,854 works): the hundred composers with the most works and their counts, read from Figure 1 of the
# paper in bytedance/GiantMIDI-Piano (paper/GiantMIDI-Piano A MIDI dataset of classical piano music_v0.4.pdf), in its
# spelling; 4,096 works together.
GIANTMIDI_TOP_WORKS = (
    ("Scarlatti, Domenico", 274), ("Liszt, Franz", 197), ("Bach, Johann Sebastian", 147), ("Schubert, Franz", 127),
    ("Chopin, Frédéric", 102), ("Mozart, Wolfgang Amadeus", 85), ("Bach, Carl Philipp Emanuel", 83),
    ("Beethoven, Ludwig van", 82), ("Czerny, Carl", 80), ("Handel, George Frideric", 78), ("Carbajo, Víctor", 77),
    ("Simpson, Daniel Léo", 69), ("Scriabin, Aleksandr", 68), ("Haydn, Joseph", 64), ("Zhang, Shuwen", 56),
    ("Rebikov, Vladimir", 56), ("Gottschalk, Louis Moreau", 55), ("Beatty, Stephen W.", 54), ("Satie, Erik", 53),
    ("Chaminade, Cécile", 52), ("Alkan, Charles-Valentin", 52), ("Hummel, Johann Nepomuk", 51), ("Raff, Joachim", 48),
    ("Turina, Joaquín", 48), ("Moszkowski, Moritz", 48), ("Godard, Benjamin", 45), ("Praeger, Ferdinand", 43),
    ("Joplin, Scott", 43), ("Heller, Stephen", 43), ("Lack, Théodore", 41), ("Schumann, Robert", 39),
    ("Balakirev, Mily", 38), ("Tinel, Jef", 36), ("Saint-Saëns, Camille", 36), ("Medtner, Nikolay", 35),
    ("Mendelssohn, Felix", 35), ("Fauré, Gabriel", 35), ("Grieg, Edvard", 35), ("Johnson, Charles Leslie", 33),
    ("Scharwenka, Xaver", 33), ("Lyapunov, Sergey", 31), ("Poulenc, Francis", 31), ("Lyadov, Anatoly", 30),
    ("Meyer-Helmund, Erik", 30), ("Busoni, Ferruccio", 30), ("Teilman, Christian", 30), ("Debussy, Claude", 29),
    ("Scott, Cyril", 28), ("Scott, James", 28), ("Manookian, Jeff", 28), ("Henselt, Adolf von", 28),
    ("Nazareth, Ernesto", 28), ("Albéniz, Isaac", 28), ("Rzewski, Frederic", 27), ("Agnew, Roy", 27),
    ("MacDowell, Edward", 27), ("Ravina, Jean Henri", 27), ("Tchaikovsky, Pyotr", 27), ("Prokofiev, Sergey", 26),
    ("Brahms, Johannes", 25), ("Bortkiewicz, Sergei", 25), ("Glinka, Mikhail", 25), ("Rachmaninoff, Sergei", 25),
    ("Schütt, Eduard", 25), ("Rubinstein, Anton", 24), ("Godowsky, Leopold", 24), ("Kuhlau, Friedrich", 23),
    ("Granados, Enrique", 23), ("Hiller, Ferdinand", 23), ("Wachs, Paul", 23), ("Grünfeld, Alfred", 23),
    ("Villa-Lobos, Heitor", 23), ("Beach, Amy Marcy", 23), ("Lange, Gustav", 22), ("Weber, Carl Maria von", 22),
    ("Clementi, Muzio", 22), ("Mayerl, Billy Joseph", 22), ("Schmitt, Florent", 21), ("Pachman, Jason L.", 21),
    ("Reger, Max", 21), ("Hitz, Franz", 21), ("Palmgren, Selim", 21), ("Sor, Fernando", 21), ("Friedman, Ignaz", 21),
    ("Harrington, Jeffrey Michael", 21), ("Victoria, Tomás Luis de", 20), ("Melartin, Erkki", 20),
    ("Stanchinsky, Aleksey", 20), ("Bowen, York", 20), ("Gurlitt, Cornelius", 20), ("St. Clair, Richard", 20),
    ("Smetana, Bedřich", 20), ("Snuggs, Colin Peter", 19), ("Ornstein, Leo", 19), ("Cui, César", 19),
    ("Ferrari, Carlotta", 19), ("Krzyżanowski, Ignacy", 19), ("Arensky, Anton", 19), ("Dussek, Jan Ladislav", 18),
    ("Yachshenko, Taras", 18),
)
# ... and those of the paper's Figure 2 (the hundred with the longest works) that Figure 1 does not show.
GIANTMIDI_TOP_DURATION_MORE = (
    "Violette, Andrew", "Szymanowski, Karol", "Hindemith, Paul", "Bartók, Béla", "Dvořák, Antonín",
    "Voříšek, Jan Václav", "Suk, Josef", "Koechlin, Charles", "Wieniawski, Józef", "Blumenfeld, Felix",
    "Glazunov, Aleksandr", "Méreaux, Jean-Amédée Lefroid de", "Myaskovsky, Nikolay", "Dupont, Gabriel",
    "Kosenko, Viktor", "Ries, Ferdinand", "Bertini, Henri", "Schumann, Clara", "Bendel, Franz", "Novák, Vítězslav",
    "Casella, Alfredo", "Bomtempo, João Domingos", "Hahn, Reynaldo", "Kalkbrenner, Friedrich Wilhelm",
    "Séverac, Déodat de", "Sgambati, Giovanni",
)

# ATEPP-metadata-1.1.csv, column `composer` (BetsyTang/ATEPP): all 25.
ATEPP_COMPOSERS = (
    "Alexander Scriabin", "Anton Webern", "Béla Bartók", "Claude Debussy", "César Franck", "Dmitri Shostakovich",
    "Domenico Scarlatti", "Edvard Grieg", "Felix Mendelssohn", "Franz Joseph Haydn", "Franz Liszt", "Franz Schubert",
    "Frédéric Chopin", "George Frideric Handel", "Johann Sebastian Bach", "Johannes Brahms", "Ludwig van Beethoven",
    "Maurice Ravel", "Modest Mussorgsky", "Paul Hindemith", "Pyotr Ilyich Tchaikovsky", "Robert Schumann",
    "Sergei Prokofiev", "Sergei Rachmaninoff", "Wolfgang Amadeus Mozart",
)

TABLE = PeriodTable()


def style(name: str) -> str:
    return TABLE.resolve(name).style


def test_atepp_composers_all_known():
    assert len(ATEPP_COMPOSERS) == 25
    unknown = [n for n in ATEPP_COMPOSERS if not TABLE.resolve(n).known]
    assert unknown == []
    assert [style(n) for n in ("Johann Sebastian Bach", "Franz Joseph Haydn", "Frédéric Chopin", "Anton Webern")] == \
        ["baroque/bach", "classical/haydn", "romantic/chopin", "modern/webern"]


def test_giantmidi_most_recorded_composers_known():
    names = [n for n, _ in GIANTMIDI_TOP_WORKS] + list(GIANTMIDI_TOP_DURATION_MORE)
    assert len(GIANTMIDI_TOP_WORKS) == 100 and len(set(names)) == 126
    assert [n for n in names if not TABLE.resolve(n).known] == []
    # GiantMIDI-Piano's order is "Surname, Given names"; it reaches the same composers as the usual order does.
    assert style("Bach, Carl Philipp Emanuel") == style("Carl Philipp Emanuel Bach") == "classical/bach-cpe"
    assert style("Scriabin, Aleksandr") == style("Alexander Scriabin") == "romantic/scriabin"
    assert style("Victoria, Tomás Luis de") == "baroque/victoria"  # before the baroque: baroque
    assert style("Joplin, Scott") == "modern/joplin" and style("Rzewski, Frederic") == "modern/rzewski"


@pytest.mark.skipif(not MAESTRO_CSV.is_file(), reason="shared/data/maestro/maestro-v3.0.0.csv is absent")
def test_maestro_composers_keep_their_styles():
    with open(MAESTRO_CSV, newline="", encoding="utf-8") as f:
        listed = {row["canonical_composer"].strip() for row in csv.DictReader(f)}
    parts = {n.strip() for name in listed for n in name.split("/")}
    assert parts == set(MAESTRO_STYLES)
    assert {n: style(n) for n in parts} == MAESTRO_STYLES
    # a transcription is the first listed composer's
    assert {n: style(n) for n in listed} == {n: MAESTRO_STYLES[n.split("/")[0].strip()] for n in listed}


def test_colliding_surnames_get_distinct_slugs():
    bachs = [TABLE.resolve(n) for n in ("J.S. Bach", "C.P.E. Bach", "Bach, Johann Christian", "W. F. Bach",
                                        "Johann Christoph Friedrich Bach")]
    assert [c.slug for c in bachs] == ["bach", "bach-cpe", "bach-jc", "bach-wf", "bach-jcf"]
    assert [c.period for c in bachs] == ["baroque", "classical", "classical", "baroque", "classical"]
    assert [style(n) for n in ("Johann Strauss", "Johann Strauss II", "Richard Strauss")] == \
        ["romantic/strauss", "romantic/strauss", "romantic/strauss-r"]
    assert [style(n) for n in ("Domenico Scarlatti", "Scarlatti, Alessandro")] == \
        ["baroque/scarlatti", "baroque/scarlatti-a"]
    assert [style(n) for n in ("Robert Schumann", "Clara Schumann", "Clara Wieck")] == \
        ["romantic/schumann", "romantic/schumann-c", "romantic/schumann-c"]
    assert [style(n) for n in ("Wolfgang Amadeus Mozart", "Leopold Mozart")] == \
        ["classical/mozart", "classical/mozart-l"]
    assert [style(n) for n in ("Scott, Cyril", "Scott, James")] == ["modern/scott", "modern/scott-j"]


def test_bare_surname_is_the_member_who_keeps_it():
    owners = {"bach": "Johann Sebastian Bach", "scarlatti": "Domenico Scarlatti", "strauss": "Johann Strauss",
              "schumann": "Robert Schumann", "mozart": "Wolfgang Amadeus Mozart", "couperin": "François Couperin",
              "fischer": "Johann Christian Fischer", "scharwenka": "Xaver Scharwenka", "scott": "Cyril Scott"}
    assert {s: TABLE.resolve(s.upper()).name for s in owners} == owners
    # given names pick among the members; middle names may be left out, the first name may not
    assert [TABLE.resolve(n).slug for n in ("Carl Bach", "Emanuel Bach", "Christian Bach", "Johann Bach")] == \
        ["bach-cpe", "bach-cpe", "bach-jc", "bach"]
    assert TABLE.resolve("Christoph Bach") == Composer("bach-c", UNKNOWN_PERIOD, False)


def test_table_slug_rule():
    """The surname's slug, or for all but one of the composers sharing a surname, surname-initials."""
    by_surname: dict[str, list] = {}
    for c in COMPOSERS:
        by_surname.setdefault(c.surname, []).append(c)
    for surname, members in by_surname.items():
        base = composer_slug(surname.replace(" ", "-"))
        bare = [c for c in members if c.slug == base]
        assert len(bare) == 1, (surname, [c.slug for c in members])
        for c in members:
            if c is not bare[0]:
                initials = "".join(w[0] for w in c.given.replace("-", " ").split() if not w.islower())
                assert c.slug == f"{base}-{composer_slug(initials)}", c
    assert set(COMPOSER_PERIODS.values()) == set(PERIODS)
    assert COMPOSER_PERIODS == {c.slug: c.period for c in COMPOSERS} and len(COMPOSERS) >= 300


@pytest.mark.parametrize("spellings", [
    ("Sergei Rachmaninoff", "Rachmaninov", "Sergey Rakhmaninov", "Rachmaninoff, Sergei", "rachmaninoff"),
    ("Alexander Scriabin", "Skryabin", "Aleksandr Skrjabin", "A. Scriabine"),
    ("Pyotr Ilyich Tchaikovsky", "Tschaikowsky", "Chaikovsky, Pyotr", "Peter Tchaikovsky", "P. I. Tchaikovsky"),
    ("Modest Mussorgsky", "Musorgsky", "Moussorgsky, Modeste"),
    ("Sergei Prokofiev", "Prokofieff", "Sergey Prokofiev"),
    ("Arnold Schoenberg", "Schönberg", "Arnold Schönberg"),
    ("George Frideric Handel", "Händel", "Georg Friedrich Händel", "Haendel"),
    ("Igor Stravinsky", "Strawinsky", "Igor Strawinsky"),
    ("Franz Liszt", "Liszt, Ferenc", "Liszt Ferenc", "Ferenc Liszt"),
    ("Frédéric Chopin", "Fryderyk Chopin", "FRÉDÉRIC   chopin", "Chopin, Frédéric (1810-1849)", "Frederic Chopin"),
    ("Antonín Dvořák", "Antonin Dvorak", "dvorak"),
    ("Johann Sebastian Bach", "J.S. Bach", "Bach, J.S.", "Bach J.S.", "bach", "Sebastian Bach",
     "Johann_Sebastian_Bach"),
    ("Carl Philipp Emanuel Bach", "C.P.E. Bach", "Bach, C. P. E.", "bach-cpe", "Karl Philipp Emanuel Bach"),
    ("Ludwig van Beethoven", "Beethoven, Ludwig van", "L. v. Beethoven", "Beethoven"),
    ("Camille Saint-Saëns", "Saint-Saens", "Saint-Saëns, Camille"),
    ("Felix Mendelssohn", "Felix Mendelssohn Bartholdy", "Mendelssohn"),
    ("Joseph Haydn", "Franz Joseph Haydn", "Haydn, Joseph", "J. Haydn"),
    ("Franz Schubert / Franz Liszt", "Franz Schubert", "Schubert, Franz"),
])
def test_spelling_variants_meet(spellings):
    got = {n: TABLE.resolve(n) for n in spellings}
    assert all(c.known for c in got.values()), got
    assert len({c.style for c in got.values()}) == 1, got


def test_unknown_names():
    assert TABLE.resolve("Hildegard Unknownova") == Composer("unknownova", UNKNOWN_PERIOD, False)
    assert TABLE.resolve("Unknownova, Hildegard").slug == "unknownova"  # the surname, in GiantMIDI's order too
    assert TABLE.resolve("Hildegard_Unknownova").slug == "unknownova"  # ATEPP's folder names
    assert TABLE.resolve("").slug == "unknown"
    # another composer of a table surname gets the initials, never the known composer's style name
    assert [TABLE.resolve(n).slug for n in ("Michael Haydn", "Bach, Leonhard Emil", "Johann Strauss Sr.",
                                            "Joseph Kaspar Raff")] == ["haydn-m", "bach-le", "strauss-j", "raff-jk"]
    assert not any(TABLE.resolve(n).known for n in ("Michael Haydn", "Johann Strauss I"))


def test_overrides_by_full_name_and_by_slug(tmp_path):
    periods = tmp_path / "periods.json"
    periods.write_text(json.dumps({"Carl Philipp Emanuel Bach": "galant", "scarlatti-a": "neapolitan",
                                   "Rachmaninov": "russian", "Michael Haydn": "salzburg", "Hildegard Unknownova":
                                   "medieval"}), encoding="utf-8")
    assert load_periods(periods) == {"bach-cpe": "galant", "haydn-m": "salzburg", "rachmaninoff": "russian",
                                     "scarlatti-a": "neapolitan", "unknownova": "medieval"}
    table = PeriodTable.load(periods)
    assert [table.resolve(n).style for n in ("C.P.E. Bach", "J.S. Bach", "Bach, Johann Christian")] == \
        ["galant/bach-cpe", "baroque/bach", "classical/bach-jc"]  # the full name overrides that Bach alone
    assert [table.resolve(n).style for n in ("Alessandro Scarlatti", "Domenico Scarlatti")] == \
        ["neapolitan/scarlatti-a", "baroque/scarlatti"]
    assert table.resolve("Sergei Rachmaninoff").style == "russian/rachmaninoff"
    assert table.resolve("Michael Haydn") == Composer("haydn-m", "salzburg", True)
    assert table.resolve("Joseph Haydn").style == "classical/haydn"
    assert table.resolve("Unknownova, Hildegard") == Composer("unknownova", "medieval", True)
    periods.write_text(json.dumps({"bach": "early"}), encoding="utf-8")  # a bare surname: the member who keeps it
    assert [PeriodTable.load(periods).resolve(n).style for n in ("Bach", "C.P.E. Bach")] == \
        ["early/bach", "classical/bach-cpe"]


@pytest.mark.parametrize("line, message", [
    ("Bach\tJohann Sebastian\tbaroque", "expected surname, given names, period, slug"),
    ("Bach\tJohann Sebastian\tgothic\tbach", "period 'gothic' is not one of"),
    ("Bach\tJohann Sebastian\tbaroque\tBach", "slug 'Bach' must be lower-case"),
    ("Chopin\tFrédéric\tromantic\tchopin\nChopin\tFryderyk\tromantic\tchopin", "slug 'chopin' already on line 2"),
])
def test_bad_table_lines(tmp_path, line, message):
    table = tmp_path / "composers.tsv"
    table.write_text(f"# a comment\n{line}\n", encoding="utf-8")
    with pytest.raises(PeriodsError, match=message):
        read_table(table)


def test_table_ships_with_the_package():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg", encoding="utf-8")
    assert "composers.tsv" in config["options.package_data"]["deepj.corpus"]
