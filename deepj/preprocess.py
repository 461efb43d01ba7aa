"""MIDI corpus -> WebDataset shards of grid notes + manifest.json + report.json, the offline step before training.

    python -m deepj.preprocess INPUT OUTPUT_DIR [--workers N] [--shard-size-mb M] [--val-fraction F] [--seed S]
        [--min-steps K] [--max-steps K] [--max-silence F] [--max-file-mb M] [--min-pitch P] [--max-pitch P]
        [--source auto|folder|maestro|giantmidi|atepp|aria] [--periods FILE] [--unknown-composers other|skip]
        [--min-composer-confidence C] [--parser symusic|pretty_midi] [--no-sustain] [--sostenuto]
        [--keep-duplicates] [--force]

INPUT is a folder tree (`<period>/<composer>/*.mid`), a MAESTRO or ATEPP metadata CSV, Aria-MIDI's metadata.json, a
GiantMIDI-Piano folder (`--source giantmidi`), or the word `demo` (music21's bundled scores, converted once into a
cache; write `./demo` for a folder called demo). Notes are read with the sustain pedal applied (deepj.music.pedal).

Files are read in parallel (one process per core), each process appending the pieces it encodes to its own spool file;
then the shards are planned from the pieces' sizes in sorted source order and written in parallel, one process per
shard, so every core stays busy and the output is the same bytes whatever --workers. A file that cannot be used
(corrupt, empty, no notes, too short ...) is skipped and listed with its reason in report.json; nothing one file does
stops the run. Pieces without an official split go to val iff `sha256("{seed}:{source}")` maps below `--val-fraction`,
so a piece keeps its split when files are added. The same inputs and settings give the same bytes: shards, then
report.json, then manifest.json (last, so a folder with a manifest is complete).

OUTPUT_DIR is taken for the run (deepj.data.shards.OutputFolder): a second run into it is refused at once (exit 2,
naming the first), the new output is built in a private folder inside it and replaces the old one only when complete;
a run that fails (a full disk, an unwritable folder) leaves an earlier output as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from deepj import __version__
from deepj.corpus import SOURCES, SPLITS, Corpus, CorpusError, CorpusOptions, open_corpus
from deepj.data.manifest import INDEX, MANIFEST, MAX_PIECE_STEPS, PIECE_DTYPE, Manifest, PieceTable, ShardEntry
from deepj.data.shards import (
    REPORT,
    OutputError,
    OutputFolder,
    ShardWriter,
    encode_notes,
    plan_shards,
    sample_meta,
    sample_size,
)
from deepj.music.constants import DEFAULT_MAX_PITCH, DEFAULT_MIN_PITCH
from deepj.music.midi_io import MidiError, read_midi
from deepj.music.representation import ReprConfig, num_steps, silent_steps
from deepj.music.styles import StyleTree

SPOOL_PREFIX = "spool-"  # spool-<pid>.tmp: each reading process's encoded pieces, in the run's staging folder
_spool = None  # this process's spool file (see _open_spool)
# --max-steps: 100,000 16ths = 6,250 bars, 3.5 hours at 120 bpm. MAESTRO's longest performance (2,625 s, written at a
# fixed 120 bpm) is 21,000 steps, so real music stays far below; a broken file with a stray far event (ticks near
# 1e9: millions of steps, nearly all silent) stays far above. The limit is there for such files, not for memory.
DEFAULT_MAX_STEPS = 100_000
# --max-silence: a piece with more silent steps than this share is a file with stray far notes, not music (the
# longest rests of real scores are a few bars of hundreds).
DEFAULT_MAX_SILENCE = 0.9
DEFAULT_MAX_FILE_MB = 64.0  # MIDI files are small (a 2-hour performance: about 1 MB); checked before reading


class PreprocessError(Exception):
    """A run that cannot start or produced nothing; the message says what to change. `code` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Settings:
    """Everything that changes the output (stored in the manifest; a rerun into the same folder must match it)."""

    val_fraction: float = 0.1
    seed: int = 0
    shard_size_mb: float = 64.0
    min_steps: int = 32
    max_steps: int = DEFAULT_MAX_STEPS
    max_silence: float = DEFAULT_MAX_SILENCE
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    min_pitch: int = DEFAULT_MIN_PITCH
    max_pitch: int = DEFAULT_MAX_PITCH
    parser: str = "symusic"
    sustain: bool = True  # apply the sustain pedal (controller 64): performance MIDI holds notes with it
    sostenuto: bool = False  # and the sostenuto pedal (66); Magenta's MAESTRO pipelines apply sustain only
    keep_duplicates: bool = False  # write a piece again when its notes are an earlier one's (benchmarks' copies)
    unknown_composers: str = "other"  # a composer the period table does not know: period `other`, or "skip"
    min_composer_confidence: float = 0.0  # Aria-MIDI: the least audio score of a segment whose composer tag is used
    periods: dict[str, str] = dataclasses.field(default_factory=dict)  # composer -> period overrides, as read

    def validate(self) -> ReprConfig:
        if not 0.0 <= self.val_fraction < 1.0:
            raise PreprocessError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.shard_size_mb < math.inf:
            raise PreprocessError(f"--shard-size-mb must be a finite number > 0, got {self.shard_size_mb}")
        if self.min_steps < 1:
            raise PreprocessError(f"--min-steps must be >= 1, got {self.min_steps}")
        if not self.min_steps <= self.max_steps <= MAX_PIECE_STEPS:
            raise PreprocessError(f"--max-steps must be in [--min-steps ({self.min_steps}), {MAX_PIECE_STEPS}], got "
                                  f"{self.max_steps}")
        if not 0.0 < self.max_silence <= 1.0:
            raise PreprocessError(f"--max-silence must be in (0, 1] (1: keep every piece), got {self.max_silence}")
        if not self.max_file_mb > 0:
            raise PreprocessError(f"--max-file-mb must be > 0, got {self.max_file_mb}")
        if self.parser not in ("symusic", "pretty_midi"):
            raise PreprocessError(f"--parser must be symusic or pretty_midi, got {self.parser!r}")
        try:
            return ReprConfig(self.min_pitch, self.max_pitch, sustain=self.sustain, sostenuto=self.sostenuto)
        except ValueError as e:
            raise PreprocessError(f"--min-pitch/--max-pitch: {e}") from None


# --------------------------------------------------------------------------------------------------- per file

def process_file(path: str | os.PathLike, repr_cfg: ReprConfig, min_steps: int, parser: str = "symusic", *,
                 max_steps: int = DEFAULT_MAX_STEPS, max_silence: float = DEFAULT_MAX_SILENCE,
                 max_bytes: int = int(DEFAULT_MAX_FILE_MB * 2**20)) -> np.ndarray:
    """One MIDI file -> canonical grid notes, or MidiError (its `reason` goes into the report)."""
    notes = read_midi(path, repr_cfg, parser, max_bytes=max_bytes, max_steps=max_steps)
    if len(notes) == 0:
        raise MidiError(path, "out-of-range",
                        f"no note in the pitch range [{repr_cfg.min_pitch}, {repr_cfg.max_pitch})")
    steps = num_steps(notes)
    if steps < min_steps:
        raise MidiError(path, "too-short", f"{steps} steps < --min-steps {min_steps}")
    if steps > max_steps:  # the file's length was checked; a zero-length note at its very end can add a step
        raise MidiError(path, "too-long", f"{steps} steps > --max-steps {max_steps}")
    silent = silent_steps(notes)
    if silent > max_silence * steps:
        raise MidiError(path, "mostly-silent", f"{silent} of its {steps} steps are silent ({silent / steps:.1%} > "
                        f"--max-silence {max_silence:g})")
    return notes


def _open_spool(staging: str) -> None:
    """Pool initializer (and the main process when it reads alone): this process's own spool file. Unbuffered, so a
    piece is on disk before its result is sent, and a worker terminated at the end loses nothing."""
    global _spool
    _spool = open(Path(staging) / f"{SPOOL_PREFIX}{os.getpid()}.tmp", "ab", buffering=0)


def _close_spool() -> None:
    global _spool
    if _spool is not None:
        _spool.close()
        _spool = None


def _work(task: tuple[str, ReprConfig, int, str, int, float, int]) -> tuple[bool, Any]:
    """Pool worker: -> (True, (spool file, offset, length, steps, notes, digest)) or (False, (reason, detail)). The
    encoded notes go to this process's spool; only their place and digest cross the process boundary."""
    path, repr_cfg, min_steps, parser, max_steps, max_silence, max_bytes = task
    try:
        notes = process_file(path, repr_cfg, min_steps, parser, max_steps=max_steps, max_silence=max_silence,
                             max_bytes=max_bytes)
    except MidiError as e:
        return False, (e.reason, e.detail)
    except Exception as e:  # noqa: BLE001 (a reader bug must not end a run over 100k files; reported with its type)
        return False, ("error", f"{type(e).__name__}: {e}"[:300])
    blob = encode_notes(notes)
    offset = _spool.tell()
    _spool.write(blob)
    digest = hashlib.blake2b(blob, digest_size=16).digest()
    return True, (Path(_spool.name).name, offset, len(blob), num_steps(notes), len(notes), digest)


def _write_shard(task: tuple[str, str, str, list[tuple]]) -> tuple[ShardEntry, np.ndarray]:
    """Pool worker: one planned shard from the spooled pieces -> its entry and index records."""
    staging, name, split, samples = task
    fds: dict[str, int] = {}
    writer = ShardWriter(staging, name, split)
    try:
        for source, style, style_id, spool, offset, length, steps, n in samples:
            if spool not in fds:
                fds[spool] = os.open(Path(staging) / spool, os.O_RDONLY)
            writer.add(source, style, style_id, os.pread(fds[spool], length, offset), steps, n)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        for fd in fds.values():
            os.close(fd)


# --------------------------------------------------------------------------------------------------- splits, styles

def split_hash(source: str, seed: int) -> float:
    """A piece's place in [0, 1): a function of its own name only, so adding files moves no existing piece."""
    return int(hashlib.sha256(f"{seed}:{source}".encode()).hexdigest()[:8], 16) / 2**32


def assign_splits(sources: list[str], given: list[str | None], val_fraction: float, seed: int) -> list[str]:
    """Official splits are kept; the others go to val iff their hash < val_fraction. With >= 2 hashed pieces and
    val_fraction > 0 but none in val, the smallest hash goes to val (the first piece a larger fraction would take)."""
    hashes = [split_hash(s, seed) for s in sources]
    out = [g if g is not None else ("val" if h < val_fraction else "train") for g, h in zip(given, hashes)]
    free = [i for i, g in enumerate(given) if g is None]
    if val_fraction > 0 and len(free) >= 2 and "val" not in out:
        out[min(free, key=lambda i: hashes[i])] = "val"
    return out


# --------------------------------------------------------------------------------------------------- output folder

def printable(text: str) -> str:
    """A name as valid UTF-8: bytes that were not (os.fsdecode's surrogates) become \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # backslashreplace: a stray surrogate in some detail text must not fail the run after all the work
    tmp.write_bytes((json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace"))
    tmp.replace(path)


# Settings an older deepj did not have, whose absence meant another behaviour than today's default.
_BEFORE_SETTING = {"sustain": False, "keep_duplicates": True}


def check_existing(out_dir: Path, settings: dict[str, Any], force: bool) -> None:
    """Refuse to overwrite a shard folder made with other settings (unless --force). A setting an older deepj did not
    have (absent from its manifest) counts as what that deepj did: this deepj's default, so a rerun with defaults is
    not refused, except where the default changed what is written (`_BEFORE_SETTING`: no pedal, no duplicates
    dropped)."""
    path = out_dir / MANIFEST
    if not path.is_file() or force:
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        absent = {**dataclasses.asdict(Settings()), **_BEFORE_SETTING}
        old = {**{k: v for k, v in absent.items() if k not in old}, **old}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
        raise PreprocessError(f"{path} exists but is not a readable manifest; use --force to overwrite it") from None
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
        raise PreprocessError(f"{out_dir} holds shards made with other settings ({changes}); use --force to "
                              "replace them, or choose another OUTPUT_DIR")


def split_totals(shards: list[ShardEntry], splits) -> dict[str, Any]:
    """Manifest shard entries -> {split: pieces, steps, notes, shards, bytes} for each split given."""
    totals: dict[str, Any] = {}
    for split in splits:
        mine = [e for e in shards if e.split == split]
        totals[split] = {"pieces": sum(e.pieces for e in mine), "steps": sum(e.steps for e in mine),
                         "notes": sum(e.notes for e in mine), "shards": len(mine), "bytes": sum(e.bytes for e in mine)}
    return totals


# --------------------------------------------------------------------------------------------------- the run

def _read_all(corpus: Corpus, settings: Settings, repr_cfg: ReprConfig, pool, workers: int, staging: Path,
              progress: bool):
    """Read every piece (in parallel, results in source order) into the spool files.

    -> written [(piece index, spool file, offset, length, steps, notes)], skipped [{"file", "reason", "detail"}].
    A piece whose notes are those of an earlier one, byte for byte (the same file under two names, or reached
    through two sources), is written once: the first in source order; the others are skipped as `duplicate`, so
    that no piece is trained on twice or lands in train and val both."""
    from tqdm import tqdm

    written, skipped, todo = [], [], []
    for i, p in enumerate(corpus.pieces):
        source = corpus.source(p)
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:  # its name goes into shards and reports, which are UTF-8: say so, do not fail
            skipped.append({"file": printable(source), "reason": "bad-name",
                            "detail": "the file name is not valid UTF-8; rename the file"})
            continue
        todo.append(i)
    max_bytes = int(settings.max_file_mb * 2**20)
    tasks = [(str(corpus.pieces[i].path), repr_cfg, settings.min_steps, settings.parser, settings.max_steps,
              settings.max_silence, max_bytes) for i in todo]
    if pool is not None:
        chunk = max(1, min(32, len(tasks) // (workers * 8)))
        results = pool.imap(_work, tasks, chunksize=chunk)
    else:
        _open_spool(str(staging))
        results = map(_work, tasks)
    bar = tqdm(total=len(tasks), desc="reading MIDI", unit="file", disable=not progress, file=sys.stderr,
               mininterval=1.0)
    first: dict[bytes, int] = {}  # notes digest -> the piece that had them first
    try:
        for i, (ok, payload) in zip(todo, results):
            if ok and payload[-1] in first and not settings.keep_duplicates:
                skipped.append({"file": corpus.source(corpus.pieces[i]), "reason": "duplicate",
                                "detail": f"the same notes as {corpus.source(corpus.pieces[first[payload[-1]]])}"})
            elif ok:
                first[payload[-1]] = i
                written.append((i, *payload[:-1]))
            else:
                reason, detail = payload
                skipped.append({"file": corpus.source(corpus.pieces[i]), "reason": reason, "detail": detail})
            bar.update(1)
    finally:
        bar.close()
        _close_spool()  # this process's, when it read alone (a pool's workers end with the pool)
    return written, skipped


def _write_all(plan: list[tuple[str, str, str, list[tuple]]], pool, progress: bool) -> tuple[list[ShardEntry],
                                                                                              np.ndarray]:
    """Write the planned shards (in parallel when there is a pool) -> entries and index records, in plan order."""
    from tqdm import tqdm

    results = pool.imap(_write_shard, plan) if pool is not None else map(_write_shard, plan)
    entries, records = [], []
    for entry, rec in tqdm(results, total=len(plan), desc="writing shards", unit="shard", disable=not progress,
                           file=sys.stderr, mininterval=1.0):
        entries.append(entry)
        records.append(rec)
    return entries, (np.concatenate(records) if records else np.zeros(0, PIECE_DTYPE))


def preprocess(input_spec: str, out_dir: str | Path, settings: Settings | None = None, *, periods_file=None,
               source: str = "auto", workers: int | None = None, force: bool = False,
               progress: bool = True) -> Manifest:
    """Run the whole step; returns the manifest written. Raises PreprocessError (exit status in `.code`)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    settings = settings or Settings()
    repr_cfg = settings.validate()
    try:
        # Taken first: a second run is refused at once, before it spends minutes listing (or building) a corpus.
        with OutputFolder(out_dir) as folder:
            had_output = (out_dir / MANIFEST).exists()
            try:
                options = CorpusOptions(source=source, periods_file=periods_file,
                                        unknown_composers=settings.unknown_composers,
                                        min_composer_confidence=settings.min_composer_confidence)
                corpus = open_corpus(input_spec, options)
            except CorpusError as e:
                raise PreprocessError(str(e), code=2) from None
            settings = dataclasses.replace(settings, periods=dict(corpus.report.get("period_overrides", {})))
            input_name = "demo" if input_spec == "demo" else printable(str(Path(input_spec).resolve()))
            manifest_settings = {"source": corpus.kind, "input": input_name, **dataclasses.asdict(settings)}
            try:
                return _run(corpus, input_spec, folder, settings, repr_cfg, manifest_settings, force, workers,
                            progress, t0)
            except OSError as e:  # a full disk, a quota, a folder made read-only meanwhile ...
                where = f" ({printable(e.filename)})" if isinstance(e.filename, str) else ""
                kept = "the earlier output there is unchanged" if had_output else "nothing was written"
                raise PreprocessError(f"writing the output in {out_dir} failed: {e.strerror or e}{where}; "
                                      f"{kept}") from None
    except OutputError as e:
        raise PreprocessError(str(e), code=2) from None


def _run(corpus: Corpus, input_spec: str, folder: OutputFolder, settings: Settings, repr_cfg: ReprConfig,
         manifest_settings: dict[str, Any], force: bool, workers: int | None, progress: bool, t0: float) -> Manifest:
    """The run, inside the locked output folder: everything is written into its staging folder, then committed."""
    out_dir, staging = folder.dir, folder.staging
    check_existing(out_dir, manifest_settings, force)
    if not corpus.pieces:
        what = ("no existing MIDI file listed in" if corpus.kind in ("maestro", "atepp", "aria")
                else "no .mid/.midi files under")
        raise PreprocessError(f"nothing to do: {what} {input_spec}", code=1)

    workers = max(1, workers or os.cpu_count() or 1)
    pieces = corpus.pieces
    pool = None
    if workers > 1 and len(pieces) > 1:
        import multiprocessing as mp

        pool = mp.Pool(min(workers, len(pieces)), initializer=_open_spool, initargs=(str(staging),))
    try:
        written, skipped = _read_all(corpus, settings, repr_cfg, pool, workers, staging, progress)
        skipped = sorted(corpus.skipped + skipped, key=lambda s: s["file"])
        if not written:
            counts = f"all {len(pieces) + len(corpus.skipped)} files were skipped ({_counts_text(skipped)})"
            if (out_dir / MANIFEST).exists():  # an earlier good output stays exactly as it was, its report too
                raise PreprocessError(f"nothing usable in {input_spec}: {counts}; the earlier output in {out_dir} "
                                      "is unchanged", code=1)
            report = _write_report(staging, corpus, skipped, [], np.zeros(0, PIECE_DTYPE), [], t0)
            report.replace(out_dir / REPORT)  # the report says what went wrong
            raise PreprocessError(f"nothing usable in {input_spec}: {counts}; see {out_dir / REPORT}", code=1)
        plan, present, styles = _plan(corpus, settings, written, staging)
        shards, records = _write_all(plan, pool, progress)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    for spool in staging.glob(SPOOL_PREFIX + "*"):
        spool.unlink()

    stale = folder.stale_shards({e.name for e in shards})
    totals = split_totals(shards, present)
    totals.update(files_seen=len(pieces) + len(corpus.skipped), files_skipped=len(skipped))
    manifest = Manifest(dir=staging, representation=repr_cfg, styles=StyleTree.from_leaves(styles),
                        shards=tuple(shards), totals=totals, settings=manifest_settings, tool=f"deepj {__version__}",
                        pieces=PieceTable.from_records(records))
    _write_report(staging, corpus, skipped, shards, records, styles, t0, stale)
    manifest.write()
    folder.commit([e.name for e in shards] + [REPORT, INDEX], stale)
    return dataclasses.replace(manifest, dir=out_dir)


def _plan(corpus: Corpus, settings: Settings, written: list[tuple], staging: Path):
    """Splits, style slots and shards of the pieces read: -> (shard tasks for _write_shard, splits present, styles).
    Each split's pieces in sorted source order, cut into shards of about --shard-size-mb by `plan_shards`."""
    pieces = corpus.pieces
    sources = [corpus.source(pieces[w[0]]) for w in written]
    splits = assign_splits(sources, [pieces[w[0]].split for w in written], settings.val_fraction, settings.seed)
    styles = sorted({pieces[w[0]].style for w in written})
    style_id = {s: k for k, s in enumerate(styles)}
    listed = {p.split for p in pieces} | set(corpus.report.get("splits_listed", []))
    present = [s for s in SPLITS if s != "test" or "test" in listed]  # train and val always
    shard_bytes = max(int(settings.shard_size_mb * 2**20), 1)
    plan = []
    for split in present:
        samples = []
        for k in sorted((k for k in range(len(written)) if splits[k] == split), key=lambda k: sources[k]):
            i, spool, offset, length, steps, n = written[k]
            style = pieces[i].style
            samples.append((sources[k], style, style_id[style], spool, offset, length, steps, n))
        sizes = [sample_size(sample_meta(src, st, sid, t, n), length)
                 for src, st, sid, _, _, length, t, n in samples]
        for j, (lo, hi) in enumerate(plan_shards(sizes, shard_bytes)):
            plan.append((str(staging), f"{split}-{j:06d}.tar", split, samples[lo:hi]))
    return plan, present, styles


def _counts_text(skipped: list[dict]) -> str:
    counts = Counter(s["reason"] for s in skipped)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _write_report(out_dir: Path, corpus: Corpus, skipped: list[dict], shards: list[ShardEntry], records: np.ndarray,
                  styles: list[str], t0: float, stale: list[str] | None = None) -> Path:
    per_style = {styles[sid]: int(n) for sid, n in enumerate(np.bincount(records["style"], minlength=len(styles)))
                 if n}
    per_split = Counter()
    for e in shards:
        per_split[e.split] += e.pieces
    report = {
        "source": corpus.kind,
        "root": printable(str(corpus.root)),
        "files_seen": len(corpus.pieces) + len(corpus.skipped),
        "pieces_written": sum(per_split.values()),
        "counts": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
        "pieces_per_split": {s: per_split[s] for s in SPLITS if s in per_split},
        "pieces_per_style": dict(sorted(per_style.items())),
        **corpus.report,
        "stale_shards_removed": stale or [],
        "elapsed_s": round(time.time() - t0, 2),  # the only field that differs between identical runs
    }
    path = out_dir / REPORT
    _write_json_atomic(path, report)
    return path


def summary(manifest: Manifest, out_dir: Path) -> str:
    lines = [f"wrote {out_dir}/{MANIFEST}: {manifest.styles.num_styles} styles"]
    for split, t in manifest.totals.items():
        if isinstance(t, dict):
            lines.append(f"  {split:5s} {t['pieces']:7d} pieces {t['shards']:4d} shards {t['bytes'] / 2**20:9.2f} MB "
                         f"{t['steps']:11d} steps")
    tot = manifest.totals
    report = json.loads((out_dir / REPORT).read_text(encoding="utf-8"))
    lines.append(f"  skipped {tot['files_skipped']} of {tot['files_seen']} files: {_counts_text(report['skipped'])}")
    if report.get("unknown_composers"):
        what = "skipped" if report.get("unknown_composer_rule") == "skip" else "style other/..."
        lines.append(f"  composers with no period ({what}): {', '.join(report['unknown_composers'])}")
    lines.append(f"  report: {out_dir / REPORT}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    ap = argparse.ArgumentParser(prog="python -m deepj.preprocess", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("input", help="a MIDI folder tree, a MAESTRO or ATEPP .csv, an Aria-MIDI metadata.json, a "
                    "GiantMIDI-Piano folder (with --source giantmidi), or the word demo")
    ap.add_argument("output_dir", help="folder for the shards, manifest.json and report.json")
    ap.add_argument("--workers", type=int, default=None, help="reader processes (default: os.cpu_count())")
    ap.add_argument("--shard-size-mb", type=float, default=d.shard_size_mb, help="target shard size")
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of pieces without an official "
                    "split that go to val")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the train/val hash")
    ap.add_argument("--min-steps", type=int, default=d.min_steps, help="skip pieces shorter than this many 16ths")
    ap.add_argument("--max-steps", type=int, default=d.max_steps, help="skip files lasting longer than this many "
                    f"16ths (reason too-long; at most {MAX_PIECE_STEPS})")
    ap.add_argument("--max-silence", type=float, default=d.max_silence, help="skip pieces with a larger share of "
                    "silent steps (reason mostly-silent; 1 keeps all)")
    ap.add_argument("--max-file-mb", type=float, default=d.max_file_mb, help="skip larger files unread (reason "
                    "too-large)")
    ap.add_argument("--min-pitch", type=int, default=d.min_pitch, help="lowest MIDI pitch kept (inclusive)")
    ap.add_argument("--max-pitch", type=int, default=d.max_pitch, help="highest MIDI pitch kept (exclusive)")
    ap.add_argument("--source", choices=SOURCES, default="auto", help="what INPUT is; auto: a folder tree, a CSV by "
                    "its columns (MAESTRO, ATEPP), a .json Aria-MIDI's metadata. GiantMIDI-Piano's folder needs "
                    "--source giantmidi (composers come from its file names)")
    ap.add_argument("--periods", default=None, help='JSON {"composer or slug": "period"} overriding the built-in '
                    "composer periods (the sources that name composers: MAESTRO, GiantMIDI-Piano, ATEPP, Aria-MIDI)")
    ap.add_argument("--unknown-composers", choices=["other", "skip"], default=d.unknown_composers,
                    help="a composer the period table does not know: under the period `other`, or skipped (reason "
                    "unknown-composer); listed in report.json either way")
    ap.add_argument("--min-composer-confidence", type=float, default=d.min_composer_confidence,
                    help="Aria-MIDI: skip segments whose audio score (the release's one confidence) is lower "
                    "(reason no-composer)")
    ap.add_argument("--parser", choices=["symusic", "pretty_midi"], default=d.parser, help="MIDI reader")
    ap.add_argument("--no-sustain", dest="sustain", action="store_false", help="read notes as their note-offs say, "
                    "ignoring the sustain pedal (controller 64; applied by default: while it is down, a released "
                    "note sounds on until it lifts or the key is struck again)")
    ap.add_argument("--sostenuto", action="store_true", help="apply the sostenuto pedal (controller 66) too: the keys "
                    "down when it is pressed sound until it lifts")
    ap.add_argument("--keep-duplicates", action="store_true", help="write every file, also one whose notes are "
                    "those of an earlier file (by default written once, the copies listed as duplicate)")
    ap.add_argument("--force", action="store_true", help="overwrite a shard folder made with other settings")
    args = ap.parse_args(argv)
    settings = Settings(val_fraction=args.val_fraction, seed=args.seed, shard_size_mb=args.shard_size_mb,
                        min_steps=args.min_steps, max_steps=args.max_steps, max_silence=args.max_silence,
                        max_file_mb=args.max_file_mb, min_pitch=args.min_pitch, max_pitch=args.max_pitch,
                        parser=args.parser, sustain=args.sustain, sostenuto=args.sostenuto,
                        keep_duplicates=args.keep_duplicates,
                        unknown_composers=args.unknown_composers, min_composer_confidence=args.min_composer_confidence)
    try:
        manifest = preprocess(args.input, args.output_dir, settings, periods_file=args.periods, source=args.source,
                              workers=args.workers, force=args.force)
    except PreprocessError as e:
        print(f"preprocess: error: {e}", file=sys.stderr)
        return e.code
    print(summary(manifest, Path(args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
