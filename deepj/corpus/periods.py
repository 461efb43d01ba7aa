"""Composers -> style names and periods, for every corpus that names its composers (MAESTRO, GiantMIDI-Piano, ATEPP,
Aria-MIDI).

A composer's style is `<period>/<slug>`. The table, `composers.tsv` beside this file, holds about 300 composers: every
composer of MAESTRO v3 and ATEPP and GiantMIDI-Piano's most recorded (docs/design.md#composer-periods names the
sources and the counts). Each entry is a surname, given names, a period, a slug and spelling variants.

Periods. The four the project uses: baroque, classical, romantic, modern. The rule, the same for every composer: the
DeepJ paper's placement where the paper placed the composer (Beethoven with the classical composers, Debussy with the
romantic ones, Burgmüller classical); otherwise the style of the works, not the birth year alone (Rachmaninoff and
Medtner romantic, Satie and Ravel modern). Composers before the baroque (Byrd, Gibbons, Victoria) go to baroque, the
nearest of the four, rather than to a fifth period with a handful of pieces; the 20th century's idioms, ragtime, jazz
and the contemporary composers go to modern.

Slugs. The ASCII-folded, lower-cased surname, spaces as `-` (`chopin`, `saint-saens`, `vaughan-williams`), where the
table holds one composer of that surname. Where it holds several (the Bachs, the Scarlattis, the Strausses, the
Schumanns), one keeps the bare surname: the one MAESTRO v3 names, whose slug existed before this table, else the one
with the most GiantMIDI-Piano works, else the one a comment in the table names (François Couperin); each other
gets the surname and the initials of its given names: `bach-cpe`, `bach-jc`, `scarlatti-a`, `strauss-r`,
`schumann-c`. A name the table does not hold gets the same treatment when its surname is a table slug ("Michael
Haydn" -> `haydn-m`), so that an unknown composer never shares a style name with a known one.

Matching a name. Any case, spacing and diacritics ("FRÉDÉRIC  chopin"), either order ("Johann Sebastian Bach",
"Bach, Johann Sebastian"), the first of several ("Franz Schubert / Franz Liszt"), initials ("J.S. Bach", "C. P. E.
Bach"), a surname alone ("bach": the composer who keeps the bare slug), a table slug ("bach-cpe"), and the table's
variants ("Rachmaninov", "Skryabin", "Tschaikowsky"). Given names must agree with the entry's or a variant's: the
same first name, as a word or an initial, then any of the further names in order ("Carl Bach" is C. P. E.;
"Christoph Bach" is none of the table's). Where one table composer alone has the surname, more given names than the
table's ("Claude-Achille Debussy") or the same initials in another transliteration ("Sergey Prokofiev") also do,
and another composer of that surname stays unknown ("Michael Haydn" is not Joseph).

A user's JSON file `{"composer name or slug": "period"}` overrides or extends the table; a full name is resolved first,
so "Carl Philipp Emanuel Bach" overrides C. P. E. Bach alone. A composer in neither gets the period `other` (or is
skipped, by a setting of the corpus readers) and is listed in report.json.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

UNKNOWN_PERIOD = "other"
PERIODS = ("baroque", "classical", "romantic", "modern")
TABLE_FILE = "composers.tsv"  # package data of deepj.corpus

# Words that are part of a name but not a given name nor a surname of their own ("Ludwig van", "Tomás Luis de");
# "v" stands for a shortened van/von ("L. v. Beethoven").
_PARTICLES = frozenset({"van", "von", "de", "der", "den", "di", "da", "du", "del", "della", "des", "d", "v", "zu"})
# A younger generation after a name ("Johann Strauss II", "Jr."): not a word of the name; the table holds the
# younger of each pair. An elder ("Sr.", "I", which may also be an initial) is another composer, whom the table does
# not hold; those words are dropped only where such a name is turned into a slug ("Johann Strauss I" -> strauss-j).
_SUFFIXES = frozenset({"jr", "ii", "iii", "iv", "junior"})
_SLUG_SUFFIXES = _SUFFIXES | {"sr", "senior", "i"}
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class PeriodsError(ValueError):
    """A periods file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Composer:
    slug: str  # the composer's style name ("chopin", "bach-cpe")
    period: str  # "baroque" | "classical" | "romantic" | "modern" | an override's | UNKNOWN_PERIOD
    known: bool  # in the table or the user's overrides (False: period is UNKNOWN_PERIOD)
    name: str = ""  # the table's full name ("Carl Philipp Emanuel Bach"); "" for a name the table does not hold

    @property
    def style(self) -> str:
        return f"{self.period}/{self.slug}"


@dataclass(frozen=True)
class TableComposer:
    """One line of composers.tsv."""

    surname: str  # "Saint-Saëns", "Vaughan Williams"
    given: str  # "Camille", "Ludwig van"
    period: str
    slug: str
    variants: tuple[str, ...]  # "Surname, Given names" or a surname alone

    @property
    def name(self) -> str:
        joiner = "" if self.given.endswith("'") else " "  # "Vincent d'Indy"
        return f"{self.given}{joiner}{self.surname}" if self.given else self.surname


# Letters NFKD does not split into an ASCII base letter and a mark.
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "ß": "ss", "ł": "l", "Ł": "L", "æ": "ae", "Æ": "AE", "œ": "oe",
                       "Œ": "OE", "đ": "d", "Đ": "D", "ð": "d", "þ": "th"})


def ascii_fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_FOLD))
    return text.encode("ascii", "ignore").decode("ascii")


def _words(text: str) -> list[str]:
    """'Jean-Amédée  d'Indy, Jr.' -> ['jean', 'amedee', 'd', 'indy', 'jr']: folded, lower case, split at anything
    that is not a letter or a digit."""
    return re.findall(r"[a-z0-9]+", ascii_fold(text).lower())


def _first_listed(name: str) -> str:
    """The first composer of 'A / B', without parenthesised or bracketed notes ('Chopin (1810-1849)'), underscores
    as spaces (ATEPP's folder names: 'Johann_Sebastian_Bach')."""
    return re.sub(r"\(.*?\)|\[.*?\]", " ", name.split("/")[0]).replace("_", " ").strip()


def composer_slug(name: str) -> str:
    """'Sergei Rachmaninoff / György Cziffra' -> 'rachmaninoff': the last name of the first listed composer;
    'Bach, Johann Sebastian' -> 'bach': the part before the comma, in that order."""
    first = _first_listed(name)
    surname, comma, _ = first.partition(",")
    words = [w for w in ascii_fold(surname if comma else first).lower().split() if w.strip(".,") not in _SLUG_SUFFIXES]
    if not words:
        return "unknown"
    slug = re.sub(r"[^a-z0-9-]+", "", words[-1]).strip("-")
    return slug or "unknown"


def _given_key(words: list[str]) -> tuple[str, ...]:
    return tuple(w for w in words if w not in _PARTICLES and w not in _SUFFIXES)


def _same_word(a: str, b: str) -> bool:
    return a == b or (len(a) == 1 and b.startswith(a)) or (len(b) == 1 and a.startswith(b))


def _compatible(given: tuple[str, ...], entry_given: tuple[str, ...]) -> bool:
    """The first given names agree (as words or initials), and each further one, in order, is among the entry's
    further names: middle names may be left out ('c p e' and 'carl' ~ 'carl philipp emanuel'), the first may not
    ('christoph' is not 'johann christoph friedrich')."""
    if not given or not entry_given or not _same_word(given[0], entry_given[0]):
        return False
    words = iter(entry_given[1:])
    return all(any(_same_word(w, e) for e in words) for w in given[1:])


def _initials_agree(given: tuple[str, ...], entry_given: tuple[str, ...]) -> bool:
    """The same initials: another transliteration of the same names ('sergey' ~ 'sergei', 'aleksandr' ~
    'alexander'), not another person ('joseph kaspar' is not 'joachim')."""
    return [w[0] for w in given] == [w[0] for w in entry_given]


class _Index:
    """The table, indexed by slug and by every spelling of every surname."""

    def __init__(self, composers: list[TableComposer]):
        self.by_slug = {c.slug: c for c in composers}
        # surname key ("saint saens") -> [(composer, given key)], one pair per spelling of that surname
        self.surnames: dict[str, list[tuple[TableComposer, tuple[str, ...]]]] = {}
        for c in composers:
            for spelling in (f"{c.surname}, {c.given}", *c.variants):
                surname, comma, given = spelling.partition(",")
                words = _words(given) if comma else _words(c.given)
                self.surnames.setdefault(" ".join(_words(surname)), []).append((c, _given_key(words)))
        self.longest = max(len(key.split()) for key in self.surnames)

    def default(self, surname: str) -> TableComposer | None:
        """The composer a bare surname means: the one whose slug is that surname, or the only one."""
        entries = {c.slug: c for c, _ in self.surnames[surname]}
        return entries.get(surname.replace(" ", "-")) or (next(iter(entries.values())) if len(entries) == 1 else None)

    def pick(self, surname: str, given: tuple[str, ...]) -> TableComposer | None:
        if not given:
            return self.default(surname)
        spellings = self.surnames[surname]
        for matches in ([c for c, g in spellings if g == given],
                        [c for c, g in spellings if _compatible(given, g)]):
            found = {c.slug: c for c in matches}
            if len(found) == 1:
                return next(iter(found.values()))
            if found:  # several: the bare surname's composer if among them, else no guess
                default = self.default(surname)
                return default if default is not None and default.slug in found else None
        # A surname only one table composer has: more given names than the table's ('claude achille' ~ 'claude'),
        # or another transliteration of them ('sergey' ~ 'sergei').
        if len({c.slug for c, _ in spellings}) == 1 and \
                any(_compatible(g, given) or _initials_agree(given, g) for _, g in spellings):
            return spellings[0][0]
        return None

    def split(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """A name -> (surname key in the table, given words), trying the comma order, then the surname last, then
        the surname first ('Liszt Ferenc', 'Bach J.S.'); None when no table surname is found."""
        first = _first_listed(name)
        surname, comma, given = first.partition(",")
        if comma:
            words = _words(surname)
            for start in range(len(words)):  # "de Falla, Manuel" -> "falla" when "de falla" is not a spelling
                key = " ".join(words[start:])
                if key in self.surnames:
                    return key, _given_key(words[:start] + _words(given))
            return None
        words = [w for w in _words(first) if w not in _SUFFIXES]
        for n in range(min(self.longest, len(words)), 0, -1):
            if " ".join(words[-n:]) in self.surnames:
                return " ".join(words[-n:]), _given_key(words[:-n])
        for n in range(min(self.longest, len(words) - 1), 0, -1):
            if " ".join(words[:n]) in self.surnames:
                return " ".join(words[:n]), _given_key(words[n:])
        return None

    def find(self, name: str) -> TableComposer | None:
        slug = ascii_fold(name).strip().lower()
        if slug in self.by_slug:
            return self.by_slug[slug]
        found = self.split(name)
        return self.pick(*found) if found is not None else None

    def slug_for_unknown(self, name: str) -> str:
        """composer_slug, with the initials added where the surname is a table slug ('Michael Haydn' -> haydn-m)."""
        slug = composer_slug(name)
        if slug not in self.by_slug:
            return slug
        first = _first_listed(name)
        surname, comma, given = first.partition(",")
        if not comma:  # the words before the one composer_slug took
            tokens = [t for t in first.split() if ascii_fold(t).lower().strip(".,") not in _SLUG_SUFFIXES]
            given = " ".join(tokens[:-1])
        words = [w for w in _given_key(_words(given)) if w not in _SLUG_SUFFIXES]
        if not words:
            return slug
        initials = f"{slug}-{''.join(w[0] for w in words)}"
        return initials if initials not in self.by_slug else "-".join((slug, *words))


def read_table(path: str | Path | None = None) -> list[TableComposer]:
    """composers.tsv (the package's, by default) -> its composers, checked: four columns or five, a known period, a
    slug of lower-case letters, digits and -, each slug once."""
    if path is None:
        text = resources.files("deepj.corpus").joinpath(TABLE_FILE).read_text(encoding="utf-8")
        path = TABLE_FILE
    else:
        text = Path(path).read_text(encoding="utf-8")
    composers: list[TableComposer] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) not in (4, 5):
            raise PeriodsError(f"{path}, line {line_no}: expected surname, given names, period, slug[, variants] "
                               f"separated by tabs, got {len(cells)} cells")
        surname, given, period, slug = (c.strip() for c in cells[:4])
        if period not in PERIODS:
            raise PeriodsError(f"{path}, line {line_no}: period {period!r} is not one of {', '.join(PERIODS)}")
        if not _SLUG.fullmatch(slug):
            raise PeriodsError(f"{path}, line {line_no}: slug {slug!r} must be lower-case letters, digits and -")
        if slug in seen:
            raise PeriodsError(f"{path}, line {line_no}: slug {slug!r} already on line {seen[slug]}")
        seen[slug] = line_no
        variants = tuple(v.strip() for v in cells[4].split("|") if v.strip()) if len(cells) == 5 else ()
        composers.append(TableComposer(surname, given, period, slug, variants))
    return composers


COMPOSERS: list[TableComposer] = read_table()
COMPOSER_PERIODS: dict[str, str] = {c.slug: c.period for c in COMPOSERS}  # slug -> period
_INDEX = _Index(COMPOSERS)


def table_slug(name: str) -> str:
    """The slug a name has, whether the table holds it or not: the key of a user's override."""
    found = _INDEX.find(name)
    return found.slug if found is not None else _INDEX.slug_for_unknown(name)


class PeriodTable:
    """The built-in table plus a user's overrides: `resolve(name)` -> Composer."""

    def __init__(self, overrides: dict[str, str] | None = None):
        self.overrides = dict(sorted((overrides or {}).items()))  # {slug: period}, as load_periods gives them

    @classmethod
    def load(cls, path: str | Path | None) -> PeriodTable:
        return cls(load_periods(path))

    def resolve(self, name: str) -> Composer:
        """A composer as a corpus names them ("Johann Sebastian Bach", "Bach, Johann Sebastian", "Rachmaninov",
        "Franz Schubert / Franz Liszt": the first listed) -> slug and period."""
        found = _INDEX.find(name)
        if found is not None:
            return Composer(found.slug, self.overrides.get(found.slug, found.period), True, found.name)
        slug = _INDEX.slug_for_unknown(name)
        period = self.overrides.get(slug)
        return Composer(slug, period or UNKNOWN_PERIOD, period is not None)


def load_periods(path: str | Path | None) -> dict[str, str]:
    """A JSON object {"Composer Name" or "slug": "period"} -> {slug: period}."""
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PeriodsError(f"cannot read periods file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise PeriodsError(f"periods file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise PeriodsError(f"periods file {path} must hold a JSON object {{\"composer\": \"period\"}}")
    out: dict[str, str] = {}
    for composer, period in raw.items():
        if not isinstance(period, str) or not re.fullmatch(r"[a-z0-9][a-z0-9 _.-]*", period.strip().lower()):
            raise PeriodsError(f"periods file {path}: period {period!r} for {composer!r} must be a plain name "
                               "(letters, digits, - _ .; no /)")
        out[table_slug(composer)] = period.strip().lower()
    return dict(sorted(out.items()))
