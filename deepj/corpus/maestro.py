"""A MAESTRO-style CSV: one row per performance, `canonical_composer`, `split`, `midi_filename` (relative to the CSV).

The official split is kept (train -> train, validation -> val, test -> test): MAESTRO's splits keep each composition
in one split, which a hash of the file name would not. The style is `<period>/<composer slug>`, where the slug is the
ASCII-folded, lower-cased last name of the first listed composer ("Frédéric Chopin" -> `chopin`; for "Franz Schubert
/ Franz Liszt", a transcription, the original composer `schubert`). Slugs and periods come from the composer table
(deepj.corpus.periods), which covers every composer of MAESTRO v3.0.0; a JSON file `{"composer name or slug":
"period"}` may override or extend it. A composer in neither gets the period `other` (or is skipped, by the setting)
and is listed in the report.
"""

from __future__ import annotations

from pathlib import Path

from deepj.corpus import ComposerStyles, Corpus, CorpusError, CorpusOptions, Piece, read_csv_rows

REQUIRED_COLUMNS = ("canonical_composer", "split", "midi_filename")
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def read_maestro(csv_path: str | Path, options: CorpusOptions | str | Path | None = None) -> Corpus:
    """`options` (or, as before CorpusOptions, a periods file) says how composers become styles."""
    csv_path = Path(csv_path)
    if not isinstance(options, CorpusOptions):
        options = CorpusOptions(source="maestro", periods_file=options)
    styles = ComposerStyles(options)
    rows = read_csv_rows(csv_path, REQUIRED_COLUMNS, "midi_filename", "a MAESTRO-style CSV")
    root = csv_path.parent
    pieces: list[Piece] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for line, row in rows:
        name = row["midi_filename"].strip()
        split_raw = (row.get("split") or "").strip().lower()
        if split_raw not in SPLIT_NAMES:
            raise CorpusError(f"{csv_path}, line {line}: split {row.get('split')!r} is not one of "
                              "train, validation, test")
        if name in seen:
            skipped.append({"file": name, "reason": "duplicate", "detail": f"listed again on line {line}"})
            continue
        seen.add(name)
        composer = (row.get("canonical_composer") or "").strip()
        style = styles.style(composer, shown=composer.split("/")[0])  # counted by the first listed composer
        path = root / name
        if not path.exists():
            skipped.append({"file": name, "reason": "missing", "detail": f"listed on line {line} of {csv_path.name}"})
            continue
        if style is None:
            skipped.append(styles.skip_entry(name, composer.split("/")[0]))
            continue
        pieces.append(Piece(path, style, SPLIT_NAMES[split_raw]))
    pieces.sort(key=lambda p: p.path.as_posix())
    report = {"rows": len(rows), "splits_listed": sorted({SPLIT_NAMES[(r.get("split") or "").strip().lower()]
                                                         for _, r in rows}), **styles.report()}
    return Corpus(kind="maestro", root=root, pieces=pieces, skipped=skipped, report=report)
