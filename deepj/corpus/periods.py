"""Composers -> style names and periods, for every corpus that names its composers (MAESTRO, GiantMIDI-Piano, ATEPP,
Aria-MIDI).

A composer's style is `<period>/<slug>`. The slug is the ASCII-folded, lower-cased surname (`chopin`) where the table
holds one composer of that surname; where surnames collide (the Bachs, the Strausses, the Scarlattis) the table gives
each its own slug. Names are matched after folding, in either order ("Frédéric Chopin", "Chopin, Frédéric"), and
through the table's spelling variants ("Rachmaninov" -> "Rachmaninoff").

The period rule, applied the same way to every composer (docs/design.md#composer-periods): the DeepJ paper's placement
where the paper placed the composer (it put Beethoven with the classical composers and Debussy with the romantic
ones); otherwise the style of the works, not the birth year alone. A user's JSON file `{"composer name or slug":
"period"}` overrides or extends the table. A composer in neither gets the period `other` (or is skipped, by a
setting) and is listed in report.json.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

UNKNOWN_PERIOD = "other"


class PeriodsError(ValueError):
    """A periods file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Composer:
    slug: str  # the composer's style name ("chopin", or a table slug for a shared surname)
    period: str  # "baroque" | "classical" | "romantic" | "modern" | an override's | UNKNOWN_PERIOD
    known: bool  # in the table or the user's overrides (False: period is UNKNOWN_PERIOD)

    @property
    def style(self) -> str:
        return f"{self.period}/{self.slug}"


# Surname slug -> period (the MAESTRO v3.0.0 composers, and more). TODO(periods helper): full names, collisions,
# variants, ATEPP and GiantMIDI-Piano.
COMPOSER_PERIODS: dict[str, str] = {
    # baroque
    "bach": "baroque", "gibbons": "baroque", "handel": "baroque", "pachelbel": "baroque", "purcell": "baroque",
    "rameau": "baroque", "scarlatti": "baroque", "soler": "baroque", "couperin": "baroque", "vivaldi": "baroque",
    "telemann": "baroque", "corelli": "baroque", "buxtehude": "baroque", "frescobaldi": "baroque",
    # classical
    "beethoven": "classical", "clementi": "classical", "fischer": "classical", "haydn": "classical",
    "mozart": "classical", "burgmuller": "classical", "hummel": "classical", "dussek": "classical",
    # romantic
    "albeniz": "romantic", "balakirev": "romantic", "bizet": "romantic", "brahms": "romantic", "chopin": "romantic",
    "debussy": "romantic", "franck": "romantic", "glinka": "romantic", "gounod": "romantic", "grieg": "romantic",
    "kreisler": "romantic", "liszt": "romantic", "medtner": "romantic", "mendelssohn": "romantic",
    "mussorgsky": "romantic", "paganini": "romantic", "rachmaninoff": "romantic", "rimsky-korsakov": "romantic",
    "schubert": "romantic", "schumann": "romantic", "scriabin": "romantic", "strauss": "romantic",
    "tchaikovsky": "romantic", "verdi": "romantic", "wagner": "romantic", "weber": "romantic", "borodin": "romantic",
    "moszkowski": "romantic", "saint-saens": "romantic", "dvorak": "romantic", "faure": "romantic",
    "godowsky": "romantic", "busoni": "romantic", "grunfeld": "romantic",
    # modern
    "berg": "modern", "enescu": "modern", "grainger": "modern", "janacek": "modern", "ravel": "modern",
    "prokofiev": "modern", "shostakovich": "modern", "stravinsky": "modern", "bartok": "modern", "satie": "modern",
    "schoenberg": "modern", "gershwin": "modern", "joplin": "modern", "messiaen": "modern",
    # 20th-century pianist-arrangers (in MAESTRO only after a "/"; here for overrides and completeness)
    "cziffra": "modern", "gryaznov": "modern", "hess": "modern", "horowitz": "modern", "petri": "modern",
    "pletnev": "modern",
}

# Letters NFKD does not split into an ASCII base letter and a mark.
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "ß": "ss", "ł": "l", "Ł": "L", "æ": "ae", "Æ": "AE", "œ": "oe",
                       "Œ": "OE", "đ": "d", "Đ": "D", "ð": "d", "þ": "th"})


def ascii_fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_FOLD))
    return text.encode("ascii", "ignore").decode("ascii")


def composer_slug(name: str) -> str:
    """'Sergei Rachmaninoff / György Cziffra' -> 'rachmaninoff': the last name of the first listed composer."""
    first = name.split("/")[0].strip()
    words = ascii_fold(first).lower().split()
    if not words:
        return "unknown"
    slug = re.sub(r"[^a-z0-9-]+", "", words[-1]).strip("-")
    return slug or "unknown"


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
        slug = composer_slug(name)
        period = self.overrides.get(slug) or COMPOSER_PERIODS.get(slug)
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
        out[composer_slug(composer)] = period.strip().lower()
    return dict(sorted(out.items()))
