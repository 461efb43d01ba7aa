"""`python -m deepj.bench pedal`: what the sustain pedal and the 16th-note grid do to real performance MIDI.

    python -m deepj.bench pedal PERFORMANCES [--pairs PAIRS.tsv] [--json OUT]

PERFORMANCES is a folder of performance MIDI files (any depth), e.g. MAESTRO's. For each file, read as
`deepj.preprocess` reads it (symusic, pitches [36, 84)), with and without the sustain pedal (and with sostenuto too):
- polyphony: mean sounding notes per grid step over the piece's steps (the sum of the notes' lengths over its
  length: a time average, so comparable between grids);
- note length: median, in grid steps and, before quantisation, in milliseconds (through the file's tempo map);
- what the grid does to a performance, without the pedal: onsets moved (mean distance to the nearest step, in ms),
  notes merged (two onsets of one pitch in one step become one note), at the 16th-note grid and at half of it;
- reading time per file with and without the pedal.
`--pairs` (tab-separated `performance<TAB>score[<TAB>note]` lines, paths relative to the pairs file, `#` comments)
adds the score MIDI of the same pieces: its polyphony and median note length (in ms, through its tempo map) beside the
performance's with and without the pedal. Score files are read without the pedal (sequenced scores seldom have one).

Prints a Markdown table of the totals and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepj.corpus.folder import iter_midi_paths
from deepj.music.constants import STEPS_PER_BEAT
from deepj.music.midi_io import MidiError, read_tick_notes
from deepj.music.representation import ReprConfig, quantize

READINGS = {"no pedal": {}, "sustain": {"sustain": True}, "sustain+sostenuto": {"sustain": True, "sostenuto": True}}


class Clock:
    """A file's ticks -> seconds through its tempo map (symusic's tempo events; 120 bpm before the first), read once."""

    def __init__(self, path: Path):
        import symusic

        score = symusic.Score(str(path))
        tpq = score.ticks_per_quarter
        tempos = sorted((int(t.time), float(t.mspq)) for t in score.tempos) or [(0, 500_000.0)]
        if tempos[0][0] > 0:
            tempos.insert(0, (0, 500_000.0))
        self.at = np.array([t for t, _ in tempos], np.float64)
        self.spt = np.array([m for _, m in tempos], np.float64) / 1e6 / tpq  # seconds per tick from each change on
        self.base = np.concatenate([[0.0], np.cumsum(np.diff(self.at) * self.spt[:-1])])  # seconds at each change

    def __call__(self, ticks: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.at, ticks, side="right") - 1
        return self.base[k] + (ticks - self.at[k]) * self.spt[k]


def measure(path: Path, cfg: ReprConfig, group: str = ".") -> dict[str, Any]:
    """One file's figures for each reading (see the module docstring)."""
    out: dict[str, Any] = {"file": path.name, "group": group}
    seconds = Clock(path)
    for name, pedals in READINGS.items():
        t0 = time.perf_counter()
        pitch, start, end, vel, tpq = read_tick_notes(path, **pedals)
        keep = (pitch >= cfg.min_pitch) & (pitch < cfg.max_pitch) & (vel > 0)
        notes = quantize(pitch, start, end, vel, tpq, cfg)
        out[f"read_ms {name}"] = (time.perf_counter() - t0) * 1e3
        steps = int(notes["end"].max()) if len(notes) else 0
        lengths = (notes["end"].astype(np.int64) - notes["start"]).astype(np.int64)
        out[f"polyphony {name}"] = float(lengths.sum() / max(steps, 1))
        out[f"median_steps {name}"] = float(np.median(lengths)) if len(lengths) else 0.0
        out[f"median_ms {name}"] = float(np.median(seconds(end[keep]) - seconds(start[keep])) * 1e3)
        if name == "no pedal":
            out["notes"], out["steps"] = int(keep.sum()), steps
            for label, step in (("16th", tpq / STEPS_PER_BEAT), ("32nd", tpq / STEPS_PER_BEAT / 2)):
                exact = start[keep] / step
                on_s = seconds(start[keep])
                grid_s = seconds(np.floor(exact + 0.5) * step)
                out[f"onset_moved_ms {label}"] = float(np.mean(np.abs(on_s - grid_s)) * 1e3)
                merged = quantize(pitch, start, end, vel, tpq * step / (tpq / STEPS_PER_BEAT), cfg)
                out[f"merged {label}"] = int(keep.sum()) - len(merged)
            out["step_ms"] = float(np.median(np.diff(seconds(np.array([0.0, tpq / STEPS_PER_BEAT])))) * 1e3)
    return out


def score_figures(path: Path, cfg: ReprConfig) -> dict[str, Any]:
    pitch, start, end, vel, tpq = read_tick_notes(path)
    seconds = Clock(path)
    keep = (pitch >= cfg.min_pitch) & (pitch < cfg.max_pitch) & (vel > 0)
    notes = quantize(pitch, start, end, vel, tpq, cfg)
    steps = int(notes["end"].max()) if len(notes) else 0
    lengths = (notes["end"].astype(np.int64) - notes["start"]).astype(np.int64)
    return {"score": path.name, "score group": path.parent.name,
            "score polyphony": float(lengths.sum() / max(steps, 1)),
            "score median_ms": float(np.median(seconds(end[keep]) - seconds(start[keep])) * 1e3)}


def read_pairs(pairs: Path) -> list[tuple[Path, Path]]:
    out = []
    for n, line in enumerate(pairs.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise SystemExit(f"{pairs}, line {n}: expected performance<TAB>score, got {line!r}")
        out.append((pairs.parent / cols[0], pairs.parent / cols[1]))
    return out


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def table(rows: list[dict], paired: list[dict]) -> str:
    """Markdown: for all performances and per folder of them, each reading and the grid's effects; per kind of score
    (its folder), the pairs' figures."""
    lines = []
    groups = sorted({r["group"] for r in rows})
    for group in (["all"] if len(groups) > 1 else []) + groups:
        mine = [r for r in rows if group in ("all", r["group"])]
        notes = sum(r["notes"] for r in mine)
        lines += [f"**{group}**: {len(mine)} performances, {notes:,} notes in [36, 84); means over files", "",
                  "| reading | polyphony | median note (steps) | median note (ms) | read ms/file |",
                  "|---|---|---|---|---|"]
        for name in READINGS:
            lines.append(f"| {name} | {_mean(mine, f'polyphony {name}'):.2f} | "
                         f"{_mean(mine, f'median_steps {name}'):.2f} | {_mean(mine, f'median_ms {name}'):.0f} | "
                         f"{_mean(mine, f'read_ms {name}'):.1f} |")
        lines += ["", "| grid | step (ms) | onset moved (ms, mean) | notes merged (share of all) |",
                  "|---|---|---|---|"]
        step = _mean(mine, "step_ms")
        for label, ms in (("16th", step), ("32nd", step / 2)):
            merged = sum(r[f"merged {label}"] for r in mine)
            lines.append(f"| {label} | {ms:.1f} | {_mean(mine, f'onset_moved_ms {label}'):.1f} | "
                         f"{merged:,} ({merged / max(notes, 1):.2%}) |")
        lines.append("")
    for perf_group, score_group in sorted({(p["group"], p["score group"]) for p in paired}):
        mine = [p for p in paired if (p["group"], p["score group"]) == (perf_group, score_group)]
        lines += [f"**{perf_group} vs {score_group}**: {len(mine)} pairs of the same pieces", "",
                  "| | polyphony | median note (ms) |", "|---|---|---|",
                  f"| score | {_mean(mine, 'score polyphony'):.2f} | {_mean(mine, 'score median_ms'):.0f} |"]
        for name in READINGS:
            lines.append(f"| performance, {name} | {_mean(mine, f'polyphony {name}'):.2f} | "
                         f"{_mean(mine, f'median_ms {name}'):.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepj.bench pedal", description=__doc__.split("\n\n")[0])
    ap.add_argument("performances", type=Path, help="folder of performance MIDI files")
    ap.add_argument("--pairs", type=Path, default=None, help="TSV performance<TAB>score, paths relative to it")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here too")
    args = ap.parse_args(argv)
    cfg = ReprConfig()
    rows, failed = [], []
    for path, rel_dir in iter_midi_paths(args.performances):
        try:
            rows.append(measure(path, cfg, rel_dir or "."))
        except MidiError as e:
            failed.append({"file": str(path), "reason": e.reason, "detail": e.detail})
    by_path = {(r["group"], r["file"]): r for r in rows}
    paired = []
    for perf, score in read_pairs(args.pairs) if args.pairs else []:
        rel = perf.parent.resolve().relative_to(args.performances.resolve()).as_posix() if perf.is_file() else ""
        key = (rel if rel != "." else ".", perf.name)
        if key in by_path and score.is_file():
            try:
                paired.append({**by_path[key], **score_figures(score, cfg)})
            except MidiError as e:
                failed.append({"file": str(score), "reason": e.reason, "detail": e.detail})
    print(table(rows, paired))
    result = {"files": rows, "pairs": paired, "failed": failed}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({"performances": len(rows), "pairs": len(paired), "failed": failed}))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
