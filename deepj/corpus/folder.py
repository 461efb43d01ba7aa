"""A folder tree of MIDI files: the sub-folder path names the style (`baroque/bach/x.mid` -> `baroque/bach`).

Every `*.mid` / `*.midi` (any case) under the root counts, at any depth; files directly in the root get the style
`default`. Names are lower-cased so `Baroque/Bach` and `baroque/bach` are one style. Symlinked folders are not
followed (a link loop would never end); a symlinked file is read through its link. An entry that is named like a MIDI
file but cannot be read (a directory `x.mid`, a dangling link, a FIFO or a link to /dev/zero) is still listed, so the
report names it; the reader refuses it without reading (deepj.music.midi_io: `unreadable`, `not-a-file`).
"""

from __future__ import annotations

import os
from pathlib import Path

from deepj.corpus import Corpus, CorpusError, Piece

MIDI_SUFFIXES = (".mid", ".midi")
ROOT_STYLE = "default"


def is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def style_of(rel_dir: str) -> str:
    """Relative folder path ("" for the root) -> style path."""
    parts = [p.strip().lower() for p in rel_dir.replace(os.sep, "/").split("/") if p.strip() and p != "."]
    return "/".join(parts) if parts else ROOT_STYLE


def iter_midi_paths(root: Path):
    """(path, folder relative to root) of every MIDI-named entry, in sorted order of the relative path."""
    found: list[tuple[str, Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in filenames:
            if is_midi_name(name):
                found.append((os.path.join(rel_dir, name), Path(dirpath) / name, rel_dir))
        # A directory named like a MIDI file is listed as a piece (it is reported unreadable), not entered.
        for name in [d for d in dirnames if is_midi_name(d)]:
            found.append((os.path.join(rel_dir, name), Path(dirpath) / name, rel_dir))
            dirnames.remove(name)
        dirnames.sort()
    found.sort(key=lambda x: Path(x[0]).as_posix())
    for _, path, rel_dir in found:
        yield path, rel_dir


def read_folder(root: str | Path) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder")
    pieces = [Piece(path, style_of(rel_dir), None) for path, rel_dir in iter_midi_paths(root)]
    return Corpus(kind="folder", root=root, pieces=pieces)
