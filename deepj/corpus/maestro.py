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
from collections import Counter
from pathlib import Path

from deepj.corpus import Corpus, CorpusError, Piece
from deepj.corpus.periods import PeriodsError, PeriodTable

REQUIRED_COLUMNS = ("canonical_composer", "split", "midi_filename")
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
def read_maestro(csv_path: str | Path, periods_file: str | Path | None = None) -> Corpus:
    csv_path = Path(csv_path)
    try:
        table = PeriodTable.load(periods_file)
    except PeriodsError as e:
        raise CorpusError(str(e)) from None
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
        who = table.resolve(composer)
        if not who.known:
            unknown[composer.split("/")[0].strip() or "(empty)"] += 1
        path = root / name
        if not path.exists():
            skipped.append({"file": name, "reason": "missing", "detail": f"listed on line {line} of {csv_path.name}"})
            continue
        pieces.append(Piece(path, who.style, SPLIT_NAMES[split_raw]))
    pieces.sort(key=lambda p: p.path.as_posix())
    report = {"unknown_composers": dict(sorted(unknown.items())), "period_overrides": table.overrides,
              "rows": len(rows), "splits_listed": sorted({SPLIT_NAMES[(r.get("split") or "").strip().lower()]
                                                         for r in rows})}
    return Corpus(kind="maestro", root=root, pieces=pieces, skipped=skipped, report=report)
