"""Where MIDI corpora come from: a folder tree, a MAESTRO-style CSV, GiantMIDI-Piano, ATEPP, Aria-MIDI, or the demo
corpus built from music21's scores.

Every source gives a `Corpus`: its pieces `(path, style, split)` in sorted source order, the root their source names
are relative to, and what it had to leave out before any MIDI was read (files a CSV lists that do not exist, composers
it cannot place ...). A style is a path of lower-case names, `period/composer` (`baroque/bach`); every prefix and every
component of it becomes a style name the user can ask for (see `deepj.preprocess` for the manifest's `levels`).

A folder tree names its styles by its sub-folders; the other sources name composers, whose period comes from
`deepj.corpus.periods.PeriodTable` (the built-in table plus a user's `--periods` file). A composer in neither goes under
the period `other`, or is skipped (`CorpusOptions.unknown_composers`), and is listed in report.json either way.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from deepj.corpus.periods import PeriodsError, PeriodTable

SPLITS = ("train", "val", "test")
SOURCES = ("auto", "folder", "maestro", "giantmidi", "atepp", "aria")
UNKNOWN_COMPOSER_RULES = ("other", "skip")
# A folder is very likely GiantMIDI-Piano when this share of its MIDI file names parse as GiantMIDI names.
GIANTMIDI_HINT_SHARE = 0.9


class CorpusError(Exception):
    """A corpus description that cannot be used (no such folder, a CSV without a required column ...)."""


class Piece(NamedTuple):
    path: Path  # the MIDI file (may be missing or unreadable: the reader reports why)
    style: str  # "period/composer", lower case, "/" separated
    split: str | None  # "train" | "val" | "test", or None: preprocess assigns train/val by a hash of the source


@dataclass
class Corpus:
    kind: str  # the source: "folder" | "maestro" | "giantmidi" | "atepp" | "aria" | "demo"
    root: Path  # pieces are named by their path relative to this folder
    pieces: list[Piece]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason", "detail"}, for report.json
    report: dict[str, Any] = field(default_factory=dict)  # extra facts for report.json (e.g. unknown composers)

    def source(self, piece: Piece) -> str:
        """The piece's name in shards and reports: its path relative to the root, "/" separated."""
        return relative_source(piece.path, self.root)


@dataclass(frozen=True)
class CorpusOptions:
    """How to read a corpus spec. Checked on construction: a bad value raises CorpusError naming the field."""

    source: str = "auto"  # one of SOURCES; auto: demo, folder, a .csv by its header, .json/.jsonl -> aria
    periods_file: str | Path | None = None  # JSON {"composer or slug": "period"} over the built-in composer periods
    unknown_composers: str = "other"  # "other": under the period `other`; "skip": skipped as `unknown-composer`
    # Aria-MIDI only. The release stores no confidence for its composer tags; the one confidence it stores per file
    # is the segment's audio score, which this is compared with (deepj/corpus/aria.py says why). 0.0 keeps every
    # tagged file: the release kept only segments its classifier already accepted.
    min_composer_confidence: float = 0.0

    def __post_init__(self):
        if self.source not in SOURCES:
            raise CorpusError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.unknown_composers not in UNKNOWN_COMPOSER_RULES:
            raise CorpusError(f"unknown_composers {self.unknown_composers!r} is not one of "
                              f"{', '.join(UNKNOWN_COMPOSER_RULES)}")
        conf = self.min_composer_confidence
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
            raise CorpusError(f"min_composer_confidence {conf!r} must be a number from 0 to 1 (Aria-MIDI's audio "
                              "scores lie in that range)")


def relative_source(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a CSV may name a file outside its folder ("../x.mid"); keep the path as written
        return path.as_posix()


class ComposerStyles:
    """Composer names -> styles through the period table, counting the names the table does not know."""

    def __init__(self, options: CorpusOptions):
        try:
            self.table = PeriodTable.load(options.periods_file)
        except PeriodsError as e:
            raise CorpusError(str(e)) from None
        self.rule = options.unknown_composers
        self.unknown: Counter[str] = Counter()
        # (name, also) -> Composer: a corpus of a million files names a few thousand composers (resolving is ~20 us)
        self._seen: dict[tuple[str, str | None], Any] = {}

    def style(self, name: str, shown: str | None = None, also: str | None = None) -> str | None:
        """`name`'s style ("period/slug"), or None where the table does not know the composer and the rule skips
        them. `also` is another form of the name, asked for where `name` is not known (and giving the style of an
        unknown composer). An unknown composer is counted under `shown`, the name as the corpus writes it."""
        who = self._seen.get((name, also))
        if who is None:
            who = self.table.resolve(name)
            if not who.known and also is not None:
                who = self.table.resolve(also)
            self._seen[(name, also)] = who
        if who.known:
            return who.style
        self.unknown[(shown if shown is not None else name).strip() or "(empty)"] += 1
        return None if self.rule == "skip" else who.style

    def skip_entry(self, file: str, shown: str) -> dict[str, str]:
        return {"file": file, "reason": "unknown-composer",
                "detail": f"composer {shown.strip() or '(empty)'!r} is not in the period table (give it a period in "
                          "a --periods file, or keep such pieces under the period `other`)"}

    def report(self) -> dict[str, Any]:
        return {"unknown_composers": dict(sorted(self.unknown.items())), "period_overrides": self.table.overrides,
                "unknown_composer_rule": self.rule}


def read_csv_rows(csv_path: Path, required: tuple[str, ...], path_column: str,
                  what: str) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of every data row of a corpus's metadata CSV (`what`, for messages); a missing column, a row of
    the wrong width or an empty `path_column` raise CorpusError naming the file and line."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for col in required:
                if col not in columns:
                    raise CorpusError(f"{csv_path}: required column {col!r} is missing (found columns: "
                                      f"{', '.join(columns) or 'none'}); {what} needs {', '.join(required)}")
            rows = []
            for row in reader:
                line = reader.line_num  # the line the row ends on (a quoted field may span lines)
                extra = row.pop(None, None) or []  # DictReader keys a row's extra fields None ...
                given = sum(v is not None for v in row.values())  # ... and gives a short row's last fields None
                if extra or given < len(columns):
                    raise CorpusError(f"{csv_path}, line {line}: {given + len(extra)} fields where the header has "
                                      f"{len(columns)}")
                if not row[path_column].strip():
                    raise CorpusError(f"{csv_path}, line {line}: empty {path_column}")
                rows.append((line, row))
    except OSError as e:
        raise CorpusError(f"cannot read {csv_path}: {e.strerror or e}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise CorpusError(f"{csv_path} is not a readable CSV: {e}") from None
    return rows


def open_corpus(spec: str, options: CorpusOptions | str | Path | None = None, *,
                periods_file: str | Path | None = None, **demo_options: Any) -> Corpus:
    """`spec` is a folder, a `.csv` (MAESTRO or ATEPP columns), an Aria-MIDI metadata `.json`/`.jsonl`, or the word
    `demo` (built into the cache on first use); `options.source` names the source where the spec alone cannot
    (GiantMIDI-Piano is a plain folder of files).

    A str or Path in place of `options`, or `periods_file=`, is the periods file: the form callers used before
    CorpusOptions existed.
    """
    options = _resolve_options(options, periods_file)
    if spec == "demo":
        return _open_demo(options, demo_options)
    if demo_options:
        raise CorpusError(f"{', '.join(sorted(demo_options))}: settings of the demo corpus only")
    path = Path(spec)
    if not path.exists():
        raise CorpusError(f"{spec} does not exist (give a MIDI folder, a MAESTRO or ATEPP .csv, an Aria-MIDI "
                          "metadata .json, or the word demo)")
    source = options.source if options.source != "auto" else _detect(path)
    if source != "aria" and options.min_composer_confidence != CorpusOptions.min_composer_confidence:
        raise CorpusError("the minimum composer confidence applies to Aria-MIDI only (its metadata .json); "
                          f"{spec} is read as {source}")
    if source == "folder":
        return _open_folder(path, options)
    if source == "maestro":
        from deepj.corpus import maestro

        _need_file(path, "a MAESTRO CSV")
        return maestro.read_maestro(path, options)
    if source == "giantmidi":
        from deepj.corpus import giantmidi

        return giantmidi.read_giantmidi(path, options)
    if source == "atepp":
        from deepj.corpus import atepp

        _need_file(path, "an ATEPP metadata CSV")
        return atepp.read_atepp(path, options)
    from deepj.corpus import aria

    return aria.read_aria(path, options)


def _resolve_options(options: CorpusOptions | str | Path | None, periods_file: str | Path | None) -> CorpusOptions:
    if options is None or isinstance(options, (str, Path)):
        if options is not None and periods_file is not None and Path(options) != Path(periods_file):
            raise CorpusError(f"two periods files given: {options} and {periods_file}")
        return CorpusOptions(periods_file=options if options is not None else periods_file)
    if not isinstance(options, CorpusOptions):
        raise CorpusError(f"options must be a CorpusOptions, a periods file or None, not {type(options).__name__}")
    if periods_file is None:
        return options
    if options.periods_file is not None and Path(options.periods_file) != Path(periods_file):
        raise CorpusError(f"two periods files given: {options.periods_file} and {periods_file}")
    return replace(options, periods_file=periods_file)


def _detect(path: Path) -> str:
    """The source `auto` reads `path` as: a folder tree, a CSV by its header, an Aria-MIDI metadata file."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_kind(path)
    if suffix in (".json", ".jsonl"):
        return "aria"
    raise CorpusError(f"{path} is a file but not a .csv, .json or .jsonl; give a MIDI folder, a MAESTRO or ATEPP "
                      ".csv, an Aria-MIDI metadata .json, or the word demo")


def _csv_kind(path: Path) -> str:
    from deepj.corpus import atepp, maestro

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise CorpusError(f"{path} is not a readable CSV: {e}") from None
    columns = {c.strip() for c in header}
    if set(maestro.REQUIRED_COLUMNS) <= columns:
        return "maestro"
    if set(atepp.REQUIRED_COLUMNS) <= columns:
        return "atepp"
    raise CorpusError(f"{path}: the header ({', '.join(header) or 'empty'}) is neither a MAESTRO CSV's (needs "
                      f"{', '.join(maestro.REQUIRED_COLUMNS)}) nor an ATEPP metadata CSV's (needs "
                      f"{', '.join(atepp.REQUIRED_COLUMNS)})")


def _need_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise CorpusError(f"{path} is not a file; {what} is")


def _refuse_composer_settings(options: CorpusOptions, what: str) -> None:
    """A folder tree names its styles itself: a composer setting would silently do nothing, so it is refused."""
    if options.periods_file is not None:
        raise CorpusError("--periods applies to the sources that name composers (MAESTRO, GiantMIDI-Piano, ATEPP, "
                          f"Aria-MIDI); {what}")
    if options.unknown_composers != "other":
        raise CorpusError(f"skipping unknown composers applies to the sources that name composers; {what}")


def _open_demo(options: CorpusOptions, demo_options: dict[str, Any]) -> Corpus:
    from deepj.corpus import demo, folder

    if options.source != "auto":
        raise CorpusError(f"demo is the built-in corpus; --source {options.source} reads a file or folder")
    _refuse_composer_settings(options, "the demo corpus has its own period folders")
    root = demo.build_demo_corpus(**demo_options)
    corpus = folder.read_folder(root)
    corpus.kind = "demo"
    corpus.report["demo_scores_not_converted"] = demo.skipped_count(root)
    return corpus


def _open_folder(path: Path, options: CorpusOptions) -> Corpus:
    from deepj.corpus import folder, giantmidi

    if not path.is_dir():
        raise CorpusError(f"{path} is not a folder; --source folder reads a tree of MIDI files")
    _refuse_composer_settings(options, f"{path} is a folder, whose sub-folders name the styles")
    corpus = folder.read_folder(path)
    named = sum(giantmidi.parse_name(p.path.name) is not None for p in corpus.pieces)
    if options.source == "auto" and corpus.pieces and named >= GIANTMIDI_HINT_SHARE * len(corpus.pieces):
        corpus.report["hint"] = (f"{named} of the {len(corpus.pieces)} MIDI files are named like GiantMIDI-Piano's "
                                 "('Surname, Firstname, Title, YouTubeID.mid'); read as a folder tree their style is "
                                 "the folder's. --source giantmidi labels them by composer and period")
    return corpus
