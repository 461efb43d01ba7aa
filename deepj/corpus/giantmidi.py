"""GiantMIDI-Piano: a folder of piano transcriptions, each file named after its composer, title and YouTube video.

What the release documents (github.com/bytedance/GiantMIDI-Piano at commit 930d535a3882f301f7dd8b4c1389072e04989037:
README.md, dataset.py `download_youtube_piano_solo`, audios_to_midis.py, create_split.py, midis_preview/):
- a file is named "<surname>, <firstname>, <title>, <YouTube id>.mid" ("Liszt, Franz, Hungarian Rhapsody No.2,
  S.244_2, LdH1hSWGFGU.mid"): surname and first name as IMSLP lists the composer, the first name possibly empty, the
  title possibly holding ", " itself, a "/" in any field written "_". A YouTube id is 11 characters of A-Z a-z 0-9 _ -.
- the full set is one flat folder `midis/` (10,854 files); the curated subset (the video's title holds the composer's
  surname) is a copy of 7,236 of them in `surname_checked_midis/` (create_split.py; a third-party reader,
  sappho192/GiantMIDI-Piano-Parser README.md, takes the download's folders by these names). The download itself (a
  Google Drive folder) is not described further; the reader below searches any depth, so its layout does not matter.
- no split is described for the download. The repository's
  resources/full_music_pieces_youtube_similarity_pianosoloprob_split.csv assigns one (validation, test, then 8 train,
  cycling through each composer's pieces in the list's order); it keeps no composition in one split (MAESTRO's split
  does), so every piece gets split None and preprocess assigns train/val by a hash of its name.

Reading: give the folder (`midis/`, `surname_checked_midis/`, or one holding them); every MIDI file under it counts,
at any depth. The style is `<period>/<slug>` from the period table, asked for the name as the file writes it ("Chopin,
Frédéric": the form of the table's variants and multi-word surnames), then, where that is not known, in natural order
("Frédéric Chopin"); report.json lists an unknown composer the way the file writes it. A file whose name does not
parse is skipped as `unparsed-name`: its composer is not known, and labelling it `other` would pass unknown music off as
a composer's. A recording found twice (same YouTube id: a folder holding both midis/ and surname_checked_midis/) is
read once; the later copies in sorted order are skipped as `duplicate`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from deepj.corpus import ComposerStyles, Corpus, CorpusError, CorpusOptions, Piece, relative_source
from deepj.corpus.folder import is_midi_name, iter_midi_paths

YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
NAME_FORM = "'Surname, Firstname, Title, YouTubeID.mid'"


class GiantName(NamedTuple):
    surname: str
    firstname: str  # may be empty
    title: str
    youtube_id: str

    @property
    def composer(self) -> str:
        """The name in natural order ("Frédéric Chopin")."""
        return f"{self.firstname} {self.surname}".strip()

    @property
    def shown(self) -> str:
        """The name as the file writes it ("Chopin, Frédéric"), for the period table and report.json."""
        return f"{self.surname}, {self.firstname}" if self.firstname else self.surname


def parse_name(name: str) -> GiantName | None:
    """'Chopin, Frédéric, Études, Op.10, g0hoN6_HDVU.mid' -> GiantName; None for a name not of that form."""
    if not is_midi_name(name):
        return None
    parts = name.rsplit(".", 1)[0].split(", ")
    if len(parts) < 4 or not parts[0].strip() or not YOUTUBE_ID.fullmatch(parts[-1]):
        return None
    return GiantName(parts[0].strip(), parts[1].strip(), ", ".join(parts[2:-1]), parts[-1])


def read_giantmidi(root: str | Path, options: CorpusOptions | None = None) -> Corpus:
    options = options or CorpusOptions(source="giantmidi")
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder; GiantMIDI-Piano is a folder of MIDI files (midis/ or "
                          "surname_checked_midis/ of the download)")
    styles = ComposerStyles(options)
    pieces: list[Piece] = []
    skipped: list[dict[str, str]] = []
    first_copy: dict[str, str] = {}  # YouTube id -> the source read for it
    composers: set[str] = set()
    files = 0
    for path, _ in iter_midi_paths(root):
        files += 1
        source = relative_source(path, root)
        name = parse_name(path.name)
        if name is None:
            skipped.append({"file": source, "reason": "unparsed-name",
                            "detail": f"not named {NAME_FORM} as GiantMIDI-Piano's files are, so no composer"})
            continue
        if name.youtube_id in first_copy:
            skipped.append({"file": source, "reason": "duplicate",
                            "detail": f"the recording {name.youtube_id} is read from {first_copy[name.youtube_id]}"})
            continue
        first_copy[name.youtube_id] = source
        style = styles.style(name.shown, name.shown, also=name.composer)
        if style is None:
            skipped.append(styles.skip_entry(source, name.shown))
            continue
        composers.add(style)
        pieces.append(Piece(path, style, None))
    pieces.sort(key=lambda p: p.path.as_posix())
    report = {"rows": files, "splits_listed": [], "composers": len(composers), **styles.report()}
    return Corpus(kind="giantmidi", root=root, pieces=pieces, skipped=skipped, report=report)
