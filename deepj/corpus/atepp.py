"""ATEPP: transcribed performances of 25 composers, listed in a metadata CSV, in a composer/work/movement tree.

What the release documents (github.com/BetsyTang/ATEPP at commit f08af3776d8c70fd1ba891f1b6d319a5dda7748b: README.md,
ATEPP-metadata-1.0.csv, ATEPP-metadata-1.1.csv, repeats.csv):
- the CSV: UTF-8, comma separated, fields holding a comma quoted; columns artist, artist_id, track, track_duration,
  composer, composition_id, score_path, midi_path, youtube_links. `composer` is a full name ("Frédéric Chopin",
  "Ludwig van Beethoven"); `midi_path` is relative to the dataset's root, "<Composer_Name>/<work>/<movement>/<n>.mid"
  or "<Composer_Name>/<work>/<n>.mid", with non-ASCII letters ("Sergei_Rachmaninoff/Four_Pieces_(originally_Op.1)/
  3._Mélodie/00001.mid"); `score_path` is empty for about half the rows.
- no split: not in the CSV, not in the README. Every piece gets split None; preprocess assigns train/val by a hash.
- version 1.1 removed 65 repeated recordings (listed in repeats.csv): the 1.0 CSV read against 1.1's files reports
  them missing.

Not documented: where the CSV lies in the downloaded archive (the repository keeps it at its top). `midi_path` is read
relative to the CSV's folder, as MAESTRO's `midi_filename` is: put the CSV at the root of the MIDI tree. A name the CSV
writes composed (NFC) may lie on disk decomposed (NFD, as an archive made on macOS stores it), or the other way round;
a listed file is looked for in both forms before it counts as missing.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from deepj.corpus import ComposerStyles, Corpus, CorpusOptions, Piece, read_csv_rows

REQUIRED_COLUMNS = ("composer", "midi_path")


def locate(root: Path, name: str) -> Path | None:
    """`root / name` if it exists, else the same name in the other Unicode normal form if that exists."""
    path = root / name
    if path.exists():
        return path
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, name)
        if other != name and (root / other).exists():
            return root / other
    return None


def read_atepp(csv_path: str | Path, options: CorpusOptions | None = None) -> Corpus:
    options = options or CorpusOptions(source="atepp")
    csv_path = Path(csv_path)
    styles = ComposerStyles(options)
    rows = read_csv_rows(csv_path, REQUIRED_COLUMNS, "midi_path", "an ATEPP metadata CSV")
    root = csv_path.parent
    pieces: list[Piece] = []
    skipped: list[dict[str, str]] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        name = row["midi_path"].strip()
        if name in first_line:
            skipped.append({"file": name, "reason": "duplicate",
                            "detail": f"listed on line {first_line[name]} and again on line {line}"})
            continue
        first_line[name] = line
        composer = row["composer"] or ""
        style = styles.style(composer)
        path = locate(root, name)
        if path is None:
            skipped.append({"file": name, "reason": "missing", "detail": f"listed on line {line} of {csv_path.name}"})
            continue
        if style is None:
            skipped.append(styles.skip_entry(name, composer))
            continue
        pieces.append(Piece(path, style, None))
    pieces.sort(key=lambda p: p.path.as_posix())
    report = {"rows": len(rows), "splits_listed": [], **styles.report()}
    if first_line and sum(s["reason"] == "missing" for s in skipped) == len(first_line):
        report["hint"] = (f"none of the {len(skipped)} files {csv_path.name} lists is under {root}: midi_path is "
                          "read relative to the CSV's folder, so the CSV goes at the root of the ATEPP MIDI tree")
    return Corpus(kind="atepp", root=root, pieces=pieces, skipped=skipped, report=report)
