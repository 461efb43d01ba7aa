"""A MAESTRO-style CSV: one row per performance, `canonical_composer`, `split`, `midi_filename` (relative to the CSV).

The official split is kept (train -> train, validation -> val, test -> test): MAESTRO's splits keep each composition
in one split, which a hash of the file name would not. The style is `<period>/<composer slug>`, where the slug is the
ASCII-folded, lower-cased last name of the first listed composer ("Frédéric Chopin" -> `chopin`; for "Franz Schubert
/ Franz Liszt", a transcription, the original composer `schubert`). Periods come from `COMPOSER_PERIODS`, which
covers every composer of MAESTRO v3.0.0; a JSON file `{"composer name or slug": "period"}` may override or extend it.
A composer in neither gets the period `other` and is listed in the report.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

from deepj.corpus import Corpus, CorpusError, Piece

REQUIRED_COLUMNS = ("canonical_composer", "split", "midi_filename")
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
UNKNOWN_PERIOD = "other"

# Composer slug -> period. Periods follow the DeepJ paper where it placed a composer (it put Beethoven with the
# classical composers and Debussy with the romantic ones); otherwise by the style of the works, not birth year alone:
# late-romantic Russians (Rachmaninoff, Medtner, Scriabin) are romantic, 20th-century idioms (Berg, Janacek,
# Enescu, Grainger) are modern. Gibbons (d. 1625) and Soler (Scarlatti's pupil) are grouped with the baroque
# keyboard music they resemble. Arrangers (Liszt, Busoni, Godowsky ...) are listed too, for overrides that name them.
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


def load_periods(path: str | Path | None) -> dict[str, str]:
    """A JSON object {"Composer Name" or "slug": "period"} -> {slug: period}."""
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CorpusError(f"cannot read periods file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"periods file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CorpusError(f"periods file {path} must hold a JSON object {{\"composer\": \"period\"}}")
    out: dict[str, str] = {}
    for composer, period in raw.items():
        if not isinstance(period, str) or not re.fullmatch(r"[a-z0-9][a-z0-9 _.-]*", period.strip().lower()):
            raise CorpusError(f"periods file {path}: period {period!r} for {composer!r} must be a plain name "
                              "(letters, digits, - _ .; no /)")
        out[composer_slug(composer)] = period.strip().lower()
    return dict(sorted(out.items()))


def period_of(slug: str, overrides: dict[str, str]) -> str:
    return overrides.get(slug) or COMPOSER_PERIODS.get(slug) or UNKNOWN_PERIOD


def read_maestro(csv_path: str | Path, periods_file: str | Path | None = None) -> Corpus:
    csv_path = Path(csv_path)
    overrides = load_periods(periods_file)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for col in REQUIRED_COLUMNS:
                if col not in columns:
                    raise CorpusError(f"{csv_path}: required column {col!r} is missing (found columns: "
                                      f"{', '.join(columns) or 'none'}); a MAESTRO-style CSV needs "
                                      f"{', '.join(REQUIRED_COLUMNS)}")
            rows = list(reader)
    except OSError as e:
        raise CorpusError(f"cannot read {csv_path}: {e.strerror or e}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise CorpusError(f"{csv_path} is not a readable CSV: {e}") from None

    root = csv_path.parent
    pieces: list[Piece] = []
    skipped: list[dict[str, str]] = []
    unknown: Counter[str] = Counter()
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = (row.get("midi_filename") or "").strip()
        split_raw = (row.get("split") or "").strip().lower()
        if not name:
            raise CorpusError(f"{csv_path}, line {line}: empty midi_filename")
        if split_raw not in SPLIT_NAMES:
            raise CorpusError(f"{csv_path}, line {line}: split {row.get('split')!r} is not one of "
                              "train, validation, test")
        if name in seen:
            skipped.append({"file": name, "reason": "duplicate", "detail": f"listed again on line {line}"})
            continue
        seen.add(name)
        composer = (row.get("canonical_composer") or "").strip()
        slug = composer_slug(composer)
        period = period_of(slug, overrides)
        if period == UNKNOWN_PERIOD and slug not in overrides:
            unknown[composer.split("/")[0].strip() or "(empty)"] += 1
        path = root / name
        if not path.exists():
            skipped.append({"file": name, "reason": "missing", "detail": f"listed on line {line} of {csv_path.name}"})
            continue
        pieces.append(Piece(path, f"{period}/{slug}", SPLIT_NAMES[split_raw]))
    pieces.sort(key=lambda p: p.path.as_posix())
    report = {"unknown_composers": dict(sorted(unknown.items())), "period_overrides": overrides,
              "rows": len(rows), "splits_listed": sorted({SPLIT_NAMES[(r.get("split") or "").strip().lower()]
                                                         for r in rows})}
    return Corpus(kind="maestro", root=root, pieces=pieces, skipped=skipped, report=report)
