"""Where MIDI corpora come from: a folder tree, a MAESTRO-style CSV, or the demo corpus built from music21's scores.

Every source gives a `Corpus`: its pieces `(path, style, split)` in sorted source order, the root their source names
are relative to, and what it had to leave out before any MIDI was read (files a CSV lists that do not exist). A style
is a path of lower-case names, `period/composer` (`baroque/bach`); every prefix and every component of it becomes a
style name the user can ask for (see `deepj.preprocess` for the manifest's `levels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

SPLITS = ("train", "val", "test")


class CorpusError(Exception):
    """A corpus description that cannot be used (no such folder, a CSV without a required column ...)."""


class Piece(NamedTuple):
    path: Path  # the MIDI file (may be missing or unreadable: the reader reports why)
    style: str  # "period/composer", lower case, "/" separated
    split: str | None  # "train" | "val" | "test", or None: preprocess assigns train/val by a hash of the source


@dataclass
class Corpus:
    kind: str  # "folder" | "maestro" | "demo"
    root: Path  # pieces are named by their path relative to this folder
    pieces: list[Piece]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason", "detail"}, for report.json
    report: dict[str, Any] = field(default_factory=dict)  # extra facts for report.json (e.g. unknown composers)

    def source(self, piece: Piece) -> str:
        """The piece's name in shards and reports: its path relative to the root, "/" separated."""
        return relative_source(piece.path, self.root)


def relative_source(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a CSV may name a file outside its folder ("../x.mid"); keep the path as written
        return path.as_posix()


def open_corpus(spec: str, periods_file: str | Path | None = None, **demo_options: Any) -> Corpus:
    """`spec` is a folder, a `.csv` file (MAESTRO columns), or the word `demo` (built into the cache on first use).

    `periods_file` (a JSON `{"composer or slug": "period"}`) overrides the built-in composer periods of a CSV corpus.
    """
    if spec == "demo":
        from deepj.corpus import demo, folder

        if periods_file is not None:
            raise CorpusError("--periods applies to a MAESTRO CSV only; the demo corpus has its own period folders")
        root = demo.build_demo_corpus(**demo_options)
        corpus = folder.read_folder(root)
        corpus.kind = "demo"
        corpus.report["demo_scores_not_converted"] = demo.skipped_count(root)
        return corpus
    path = Path(spec)
    if not path.exists():
        raise CorpusError(f"{spec} does not exist (give a MIDI folder, a MAESTRO .csv, or the word demo)")
    if path.is_dir():
        from deepj.corpus import folder

        if periods_file is not None:
            raise CorpusError(f"--periods applies to a MAESTRO CSV only; {spec} is a folder, whose sub-folders "
                              "name the styles")
        return folder.read_folder(path)
    if path.suffix.lower() == ".csv":
        from deepj.corpus import maestro

        return maestro.read_maestro(path, periods_file)
    raise CorpusError(f"{spec} is a file but not a .csv; give a MIDI folder, a MAESTRO .csv, or the word demo")
