"""The demo corpus: real scores bundled with music21, converted once to MIDI in a `<period>/<composer>/` tree.

No download is needed: music21 ships about 3,000 scores (Palestrina masses, Bach chorales, Monteverdi madrigals,
Haydn/Mozart/Beethoven quartets, thousands of folk tunes in ABC collections). They are choral and chamber scores, not
piano music; merged into one roll they are still four-part polyphony in the 36..84 range DeepJ models, which makes a
corpus small enough to train on a laptop with four periods the model can learn to tell apart.

Build: `python -m deepj.corpus.demo [--out DIR] [--per-composer N] [--workers W]`, or `deepj.preprocess demo`.
Each composer contributes at most N scores, spread evenly over its files (not just the first N by name). Conversion
runs over a process pool, slowest scores first; a score that music21 cannot parse or write, or whose MIDI
`deepj.music.midi_io.read_midi` rejects, is skipped, counted and listed in `skipped.json`. A `DONE` file holding the
settings makes the next call return at once; an interrupted build resumes (finished files are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PER_COMPOSER = 40
DEMO_VERSION = 1  # bump when the selection below changes, so existing caches are rebuilt
DONE = "DONE"
SKIPPED = "skipped.json"
MIN_IN_RANGE = 0.5  # a score with fewer of its notes in the model's pitch range is skipped as "out-of-range"
# Score formats music21 parses, best first: when one piece exists in several (beethoven/x.mxl and x.krn) the first wins.
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc")


@dataclass(frozen=True)
class DemoSource:
    period: str
    composer: str  # the style name in the cache tree
    folder: str  # a folder of music21's core corpus
    max_bytes: int | None = None  # skip larger score files: they take many seconds each to convert
    exclude: str | None = None  # regex on the path inside the folder


DEMO_SOURCES: tuple[DemoSource, ...] = (
    # Single-work composers (luca, lusitano, cpebach) are left out: a style slot with one piece lands in train or
    # in val only, and teaches the style embedding nothing.
    DemoSource("renaissance", "palestrina", "palestrina"),
    DemoSource("renaissance", "josquin", "josquin"),  # 8 chansons; each .abc holds the voices of one piece
    DemoSource("baroque", "bach", "bach"),
    DemoSource("baroque", "monteverdi", "monteverdi"),
    DemoSource("baroque", "corelli", "corelli"),  # one movement each: tiny styles, kept so that the baroque
    DemoSource("baroque", "handel", "handel"),  # period is more than Bach and Monteverdi
    DemoSource("classical", "haydn", "haydn"),
    DemoSource("classical", "mozart", "mozart"),
    # Beethoven's larger quartet movements are slow to convert; the ones under 70 kB (8 movements) are kept.
    DemoSource("classical", "beethoven", "beethoven", max_bytes=70_000),
    DemoSource("folk", "essen", "essenFolksong", exclude=r"^(test|variant)"),  # test files of the ABC parser
    DemoSource("folk", "oneills", "oneills1850"),
    DemoSource("folk", "ryans", "ryansMammoth"),
    DemoSource("folk", "airds", "airdsAirs"),
    DemoSource("folk", "nottingham", "nottingham-dataset"),
)


def demo_cache_dir() -> Path:
    base = os.environ.get("DEEPJ_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "deepj") / "demo-midi"


def music21_corpus_dir() -> Path:
    try:
        import music21.corpus
    except ImportError:
        raise RuntimeError("the demo corpus needs music21 (pip install music21)") from None
    root = Path(music21.corpus.__file__).parent
    if not (root / "bach").is_dir():
        raise RuntimeError(f"music21's bundled scores are not installed under {root}; the demo corpus needs them")
    return root


# --------------------------------------------------------------------------------------------------- selection

@dataclass(frozen=True)
class Task:
    src: str  # score file
    number: int | None  # tune number (X:) inside an ABC collection, None for the whole file
    out: str  # MIDI path relative to the cache root: <period>/<composer>/<name>.mid
    cost: float  # rough conversion cost (bytes parsed), to start the slowest first


def _abc_tunes(path: Path) -> list[tuple[int, str]]:
    """(X: number, first T: title) of each tune of an ABC file."""
    tunes: list[tuple[int, str]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := re.match(r"X:\s*(\d+)", line):
            tunes.append((int(m.group(1)), ""))
        elif line.startswith("T:") and tunes and not tunes[-1][1]:
            tunes[-1] = (tunes[-1][0], line[2:].strip())
    return tunes


def _score_files(folder: Path, src: DemoSource) -> list[Path]:
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or path.suffix.lower() not in SCORE_SUFFIXES:
            continue
        if src.exclude and re.search(src.exclude, rel):
            continue
        if src.max_bytes is not None and path.stat().st_size > src.max_bytes:
            continue
        stem = rel[: -len(path.suffix)]
        best = by_stem.get(stem)
        if best is None or SCORE_SUFFIXES.index(path.suffix.lower()) < SCORE_SUFFIXES.index(best.suffix.lower()):
            by_stem[stem] = path
    return [by_stem[k] for k in sorted(by_stem)]


def _spread(items: list, cap: int) -> list:
    """At most `cap` items, evenly spaced over the list (so a cap samples every file, not only the first)."""
    if len(items) <= cap:
        return list(items)
    return [items[i * len(items) // cap] for i in range(cap)]


def select_tasks(per_composer: int, corpus_dir: Path | None = None) -> list[Task]:
    corpus_dir = corpus_dir or music21_corpus_dir()
    tasks: list[Task] = []
    for src in DEMO_SOURCES:
        folder = corpus_dir / src.folder
        candidates: list[tuple[Path, int | None, float]] = []
        for path in _score_files(folder, src):
            size = path.stat().st_size
            tunes = _abc_tunes(path) if path.suffix.lower() == ".abc" else []
            # One tune, or several tunes sharing a title (the voices of one piece): the whole file is one score.
            if len(tunes) <= 1 or len({t for _, t in tunes}) == 1:
                candidates.append((path, None, float(size)))
            else:
                candidates.extend((path, n, size / len(tunes)) for n, _ in tunes)
        for path, number, cost in _spread(candidates, per_composer):
            rel = path.relative_to(folder).as_posix()
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", rel[: -len(path.suffix)].replace("/", "-"))
            if number is not None:
                name += f"-{number}"
            tasks.append(Task(str(path), number, f"{src.period}/{src.composer}/{name}.mid", cost))
    return tasks


# --------------------------------------------------------------------------------------------------- conversion

def convert_score(src: str, number: int | None, out: Path) -> dict:
    """Parse one score with music21, write it as MIDI at `out` (atomically), and check that deepj reads it back.

    Returns the piece's stats {"notes", "steps", "in_range"}; raises on any failure (the caller counts it).
    """
    from music21 import converter, repeat, stream

    from deepj.music.midi_io import MidiError, read_midi, read_tick_notes
    from deepj.music.representation import ReprConfig, num_steps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # music21 warns about every odd ABC/MusicXML detail
        # forceSource: read the file itself, and do not store music21's parse cache (each score is read once).
        score = converter.parse(src, number=number, forceSource=True)
        if isinstance(score, stream.Opus):  # the voices of one piece, written as tunes of one ABC file
            score = score.mergeScores() if len(score.scores) > 1 else score.scores[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        try:
            score.write("midi", fp=str(tmp))
        except repeat.ExpanderException:
            # MIDI export unrolls repeats and gives up on inconsistent repeat marks (several Haydn and Mozart
            # movements): drop the marks and play each section once, which is still the composer's music.
            _drop_repeats(score)
            score.write("midi", fp=str(tmp))
    cfg = ReprConfig()
    try:
        pitch = read_tick_notes(tmp)[0]
        notes = read_midi(tmp, cfg)
        in_range = float(((pitch >= cfg.min_pitch) & (pitch < cfg.max_pitch)).mean())
        if in_range < MIN_IN_RANGE:
            raise MidiError(tmp, "out-of-range", f"{in_range:.0%} of notes in [{cfg.min_pitch}, {cfg.max_pitch})")
    except MidiError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return {"notes": int(len(notes)), "steps": num_steps(notes), "in_range": in_range}


def _drop_repeats(score) -> None:
    from music21 import bar, repeat, spanner, stream

    for m in score.recurse().getElementsByClass(stream.Measure):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(m, side), bar.Repeat):
                setattr(m, side, bar.Barline("regular"))
    for el in list(score.recurse().getElementsByClass(repeat.RepeatExpression)):
        el.activeSite.remove(el)
    for sp in list(score.recurse().getElementsByClass(spanner.RepeatBracket)):
        sp.activeSite.remove(sp)


def _convert_task(args: tuple[Task, str]) -> tuple[Task, float, dict | None, str | None]:
    """-> (task, CPU seconds, stats or None, error or None)."""
    task, root = args
    t0 = time.process_time()
    try:
        stats = convert_score(task.src, task.number, Path(root) / task.out)
        return task, time.process_time() - t0, stats, None
    except Exception as e:  # noqa: BLE001 (music21 raises dozens of types on odd scores: each is listed, not fatal)
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        return task, time.process_time() - t0, None, f"{type(e).__name__}: {msg}"


def _settings(per_composer: int) -> dict:
    import music21

    return {"version": DEMO_VERSION, "per_composer": int(per_composer), "music21": music21.__version__}


def build_demo_corpus(cache_dir: str | Path | None = None, per_composer: int = DEFAULT_PER_COMPOSER,
                      workers: int | None = None, progress: bool = True) -> Path:
    """Build (or reuse) the demo MIDI tree and return its root."""
    from tqdm import tqdm

    root = Path(cache_dir) if cache_dir is not None else demo_cache_dir()
    if per_composer < 1:
        raise ValueError(f"per_composer must be >= 1, got {per_composer}")
    settings = _settings(per_composer)
    done = root / DONE
    if done.is_file():
        try:
            prev = json.loads(done.read_text())
        except json.JSONDecodeError:
            prev = {}
        if prev.get("settings") == settings and len(list(root.glob("*/*/*.mid"))) == prev.get("pieces"):
            return root
    done.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tasks = select_tasks(per_composer)
    wanted = {t.out for t in tasks}
    for old in root.glob("*/*/*.mid*"):  # files of another selection, and .tmp leftovers of a killed build
        if old.relative_to(root).as_posix() not in wanted:
            old.unlink()
    todo = sorted((t for t in tasks if not (root / t.out).is_file()), key=lambda t: -t.cost)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    skipped: list[dict] = []
    cpu: dict[str, float] = {}  # style -> CPU seconds spent converting (to tune the caps)
    in_range: dict[str, float] = {}  # style -> smallest share of a converted score's notes inside 36..84
    bar = tqdm(total=len(todo), desc=f"demo corpus -> {root}", unit="score", disable=not progress, file=sys.stderr)
    jobs = [(t, str(root)) for t in todo]
    if workers == 1:
        results = map(_convert_task, jobs)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers)
        results = pool.imap_unordered(_convert_task, jobs)
    try:
        for task, seconds, stats, err in results:
            style = task.out.rsplit("/", 1)[0]
            cpu[style] = cpu.get(style, 0.0) + seconds
            if stats is not None:
                in_range[style] = min(in_range.get(style, 1.0), stats["in_range"])
            if err is not None:
                skipped.append({"score": task.src, "number": task.number, "out": task.out, "error": err})
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    skipped.sort(key=lambda s: s["out"])
    (root / SKIPPED).write_text(json.dumps(skipped, indent=1) + "\n")
    pieces = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/*.mid"))
    per_style: dict[str, int] = {}
    for p in pieces:
        style = p.rsplit("/", 1)[0]
        per_style[style] = per_style.get(style, 0) + 1
    marker = {"settings": settings, "pieces": len(pieces), "skipped": len(skipped),
              "seconds": round(time.time() - t0, 1), "styles": per_style,
              "cpu_seconds": {k: round(v, 1) for k, v in sorted(cpu.items())},
              "in_range_min": {k: round(v, 3) for k, v in sorted(in_range.items())}}
    tmp = done.with_name(DONE + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    tmp.replace(done)
    print(f"demo corpus: {len(pieces)} MIDI files in {root} ({len(todo)} converted, {len(skipped)} scores skipped, "
          f"listed in {root / SKIPPED}; {marker['seconds']} s)", file=sys.stderr)
    return root


def skipped_count(root: str | Path) -> int:
    """How many selected scores the last build of `root` could not convert (listed in skipped.json)."""
    path = Path(root) / SKIPPED
    return len(json.loads(path.read_text())) if path.is_file() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepj.corpus.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help=f"cache folder (default {demo_cache_dir()}; $DEEPJ_CACHE moves it)")
    ap.add_argument("--per-composer", type=int, default=DEFAULT_PER_COMPOSER, help="most scores per composer")
    ap.add_argument("--workers", type=int, default=None, help="conversion processes (default: all cores)")
    args = ap.parse_args(argv)
    root = build_demo_corpus(args.out, args.per_composer, args.workers)
    marker = json.loads((root / DONE).read_text())
    for style, n in sorted(marker["styles"].items()):
        print(f"  {style:28s} {n:4d} files")
    print(f"{marker['pieces']} files in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
