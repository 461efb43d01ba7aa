"""Aria-MIDI: solo-piano segments transcribed from recordings, their tags in one JSON file keyed by recording.

What the release documents (github.com/loubbrad/aria-midi README.md at commit
24cd6d37d0dff4d63d1818f4da7b86ac53497064; the release's own loader, `meta_aria_midi_json` in ariautils/midi.py of
github.com/EleutherAI/aria-utils at commit e122d0327e9fa04eac4b2535cf6e3c62276a601a):
- a file is named `<file_id>_<segment_number>.mid`, one per contiguous solo-piano segment of a recording.
- metadata.json is {"<file_id>": {"metadata": {"<category>": <value>, ...}, "audio_scores": {"<segment>": <score>}}}.
  The categories include genre, composer, performer and compositional identifiers; the tags were extracted from each
  recording's title and description and "may vary in accuracy". A segment's audio score is its classifier's average
  score, "designed to correlate with the audio quality" (the classifier judges clean solo piano).
- the loader reads metadata.json two folders above a MIDI file (`Path(file).parents[2]`) and the file id as a number
  (`int(stem.split("_")[0])`): the archive holds `<root>/metadata.json` and `<root>/data/<folder>/<id>_<seg>.mid`.
- no split: every piece gets split None; preprocess assigns train/val by a hash of its name.

Not documented, and chosen here (say so in report.json where it matters):
- the composer tag's form. The one public example found (a tutorial quoting an entry of the deduped subset:
  "composer": "strauss", "audio_scores": {"0": 0.9902}, key "2") is a lower-case surname. A string goes to the period
  table as it is, a list of strings as its first (as MAESTRO's first listed composer); other types are an error
  naming the entry.
- the confidence of a composer tag: the release stores none. The one confidence it stores per file is the segment's
  audio score, so `min_composer_confidence` is compared with that: a segment the classifier doubts (a mixed or
  mislabeled recording) is the one whose title-derived tag is least likely to describe its notes. Default 0.0: every
  segment in the release already passed the authors' classifier. A segment without a score passes only at 0.0.
- the names of the folders under data/: the whole tree under the metadata file's folder is searched, and file ids are
  matched as numbers (zero-padded or not).
- whether a subset's archive (pruned, deduped, unique) lists recordings it does not hold. A recording none of whose
  segments is found is only counted (report `recordings_without_files`), so that report.json does not list hundreds of
  thousands of files; a listed segment missing from a recording that is present is skipped as `missing`.
- `.jsonl`, which the release does not ship: the same mapping split over lines, each line an object
  {"<file_id>": {...}} of one or more recordings; errors then name the line.

Skipped, with reasons: `unparsed-name` (a MIDI file not named `<id>_<segment>.mid`), `no-metadata` (a recording the
metadata does not list), `no-composer` (no composer tag, or an audio score below the minimum), `unknown-composer`
(with the skip rule), `duplicate`, `missing`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepj.corpus import ComposerStyles, Corpus, CorpusError, CorpusOptions, Piece, relative_source
from deepj.corpus.folder import iter_midi_paths

METADATA_NAME = "metadata.json"
FILE_NAME = re.compile(r"(\d+)_(\d+)\.midi?", re.IGNORECASE)


@dataclass
class Recording:
    composer: str | None  # the composer tag as given (None: no tag)
    scores: dict[int, float]  # segment -> audio score


def metadata_path(spec: Path) -> Path:
    """The metadata file a spec names: the file itself, or metadata.json in a folder (the archive's root)."""
    if spec.is_dir():
        path = spec / METADATA_NAME
        if not path.is_file():
            raise CorpusError(f"{spec} holds no {METADATA_NAME}; give Aria-MIDI's metadata file, or the folder where "
                              "the archive put it")
        return path
    return spec


def load_metadata(path: Path) -> dict[int, Recording]:
    """file id -> Recording. Invalid JSON, or an entry not of the documented form, raise CorpusError naming the file
    and the line (invalid JSON, a .jsonl line) or the entry's key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text: {e}") from None
    if path.suffix.lower() == ".jsonl":
        chunks = [(f"{path}, line {n}", line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        chunks = [(str(path), text)]
    recordings: dict[int, Recording] = {}
    for where, chunk in chunks:
        try:
            raw = json.loads(chunk)
        except json.JSONDecodeError as e:
            at = f"line {e.lineno}, column {e.colno}" if where == str(path) else f"column {e.colno}"
            raise CorpusError(f"{where}, {at}: not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise CorpusError(f"{where}: holds a JSON {type(raw).__name__}, not an object "
                              '{"<file_id>": {"metadata": {...}, "audio_scores": {...}}}')
        for key, entry in raw.items():
            file_id = _number(key, where, f"key {key!r} is not a recording id (the digits of <id>_<segment>.mid)")
            if file_id in recordings:
                raise CorpusError(f"{where}: recording {key!r} is listed twice")
            recordings[file_id] = _recording(entry, where, key)
    return recordings


def _number(text: str, where: str, problem: str) -> int:
    if not text.isdigit():
        raise CorpusError(f"{where}: {problem}")
    return int(text)


def _recording(entry: Any, where: str, key: str) -> Recording:
    if not isinstance(entry, dict):
        raise CorpusError(f"{where}: entry {key!r} is a JSON {type(entry).__name__}, not an object with "
                          '"metadata" and "audio_scores"')
    tags = entry.get("metadata") or {}
    if not isinstance(tags, dict):
        raise CorpusError(f"{where}: entry {key!r}: \"metadata\" must be an object of tags")
    composer = tags.get("composer")
    if isinstance(composer, list) and all(isinstance(c, str) for c in composer):
        composer = composer[0] if composer else None
    if composer is not None and not isinstance(composer, str):
        raise CorpusError(f"{where}: entry {key!r}: the composer tag {composer!r} is neither a name nor a list of "
                          "names")
    scores_raw = entry.get("audio_scores") or {}
    if not isinstance(scores_raw, dict):
        raise CorpusError(f"{where}: entry {key!r}: \"audio_scores\" must be an object {{\"<segment>\": <score>}}")
    scores = {}
    for seg, score in scores_raw.items():
        problem = f"entry {key!r}: audio_scores key {seg!r} is not a segment number"
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise CorpusError(f"{where}: entry {key!r}: audio score {score!r} of segment {seg!r} is not a number")
        scores[_number(seg, where, problem)] = float(score)
    return Recording(composer.strip() if composer and composer.strip() else None, scores)


def read_aria(spec: str | Path, options: CorpusOptions | None = None) -> Corpus:
    """`spec` is Aria-MIDI's metadata.json (or a .jsonl of the same entries), or the folder holding it; the MIDI files
    are searched for under that folder."""
    options = options or CorpusOptions(source="aria")
    meta_path = metadata_path(Path(spec))
    styles = ComposerStyles(options)
    recordings = load_metadata(meta_path)
    root = meta_path.parent
    minimum = options.min_composer_confidence
    pieces: list[Piece] = []
    skipped: list[dict[str, str]] = []
    found: dict[int, dict[int, str]] = {}  # file id -> segment -> source of the file read for it
    no_tag = below = files = 0
    for path, _ in iter_midi_paths(root):
        files += 1
        source = relative_source(path, root)
        match = FILE_NAME.fullmatch(path.name)
        if match is None:
            skipped.append({"file": source, "reason": "unparsed-name",
                            "detail": "not named <file_id>_<segment>.mid as Aria-MIDI's files are"})
            continue
        file_id, seg = int(match[1]), int(match[2])
        segments = found.setdefault(file_id, {})
        if seg in segments:
            skipped.append({"file": source, "reason": "duplicate",
                            "detail": f"recording {file_id}, segment {seg} is read from {segments[seg]}"})
            continue
        segments[seg] = source
        recording = recordings.get(file_id)
        if recording is None:
            skipped.append({"file": source, "reason": "no-metadata",
                            "detail": f"recording {file_id} is not in {meta_path.name}"})
            continue
        if recording.composer is None:
            no_tag += 1
            skipped.append({"file": source, "reason": "no-composer",
                            "detail": f"recording {file_id} has no composer tag"})
            continue
        score = recording.scores.get(seg)
        if minimum > 0 and (score is None or score < minimum):
            below += 1
            has = f"audio score {score:g}" if score is not None else "no audio score"
            skipped.append({"file": source, "reason": "no-composer",
                            "detail": f"{has}, below the minimum composer confidence {minimum:g}"})
            continue
        style = styles.style(recording.composer)
        if style is None:
            skipped.append(styles.skip_entry(source, recording.composer))
            continue
        pieces.append(Piece(path, style, None))
    absent = 0
    for file_id, recording in recordings.items():
        segments = found.get(file_id)
        if not segments:
            absent += 1
            continue
        sibling = Path(next(iter(segments.values())))  # a file of this recording: its folder and id's padding
        stem = sibling.name.split("_")[0]
        for seg in sorted(set(recording.scores) - set(segments)):
            skipped.append({"file": (sibling.parent / f"{stem}_{seg}.mid").as_posix(), "reason": "missing",
                            "detail": f"segment {seg} of recording {file_id} is listed in {meta_path.name}"})
    pieces.sort(key=lambda p: p.path.as_posix())
    report = {"rows": len(recordings), "files": files, "splits_listed": [], **styles.report(),
              "no_composer_tag": no_tag, "below_min_composer_confidence": below,
              "min_composer_confidence": minimum, "confidence_used": "the segment's audio score",
              "recordings_without_files": absent}
    return Corpus(kind="aria", root=root, pieces=pieces, skipped=skipped, report=report)
