"""Synthetic shard folders for tests: random canonical pieces written with `SplitWriter`, plus a manifest.json
written by `deepj.data.manifest.Manifest`, as deepj.preprocess writes it (settings and file counts are placeholders)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from deepj.data.manifest import Manifest, PieceTable, ShardEntry
from deepj.data.shards import SplitWriter, sha256_file
from deepj.music.representation import ReprConfig, merge
from deepj.music.styles import StyleTree

STYLES = ["baroque/bach", "classical/mozart", "romantic/chopin"]


def random_piece(rng: np.random.Generator, steps: int, density: float = 0.5, max_len: int = 8,
                 pitches: tuple[int, int] = (36, 84)) -> np.ndarray:
    """Canonical grid notes of exactly `steps` steps: about density * steps random notes of 1..max_len steps,
    pitches in [pitches[0], pitches[1])."""
    k = max(1, int(steps * density))
    pitch = rng.integers(pitches[0], pitches[1], k + 1)
    start = rng.integers(0, steps, k + 1)
    start[-1] = steps - 1  # the last note ends exactly at `steps`
    end = np.minimum(start + rng.integers(1, max_len + 1, k + 1), steps)
    return merge(pitch, start, end, rng.integers(1, 128, k + 1))


def dense_piece(rng: np.random.Generator, steps: int, cfg: ReprConfig | None = None) -> np.ndarray:
    """Every pitch re-struck every step: num_notes * steps notes, the densest canonical piece (for memory tests)."""
    cfg = ReprConfig() if cfg is None else cfg
    n = cfg.num_notes
    start = np.repeat(np.arange(steps), n)
    pitch = np.tile(np.arange(cfg.min_pitch, cfg.max_pitch), steps)
    return merge(pitch, start, start + 1, rng.integers(1, 128, len(start)))


def write_manifest(out_dir: Path, entries: list[ShardEntry], styles: list[str], records: np.ndarray,
                   cfg: ReprConfig | None = None) -> Manifest:
    cfg = ReprConfig() if cfg is None else cfg
    totals: dict = {"files_seen": sum(e.pieces for e in entries), "files_skipped": 0}
    for split in sorted({e.split for e in entries}):
        mine = [e for e in entries if e.split == split]
        totals[split] = {"pieces": sum(e.pieces for e in mine), "steps": sum(e.steps for e in mine),
                         "notes": sum(e.notes for e in mine), "bytes": sum(e.bytes for e in mine),
                         "shards": len(mine)}
    manifest = Manifest(dir=Path(out_dir), representation=cfg, styles=StyleTree.from_leaves(list(styles)),
                        shards=tuple(entries), totals=totals, settings={"source": "synthetic test corpus"},
                        tool="deepj 0.1.0 (tests/shardgen.py)", pieces=PieceTable.from_records(records))
    manifest.write()
    return manifest


def write_corpus(out_dir: Path, splits: dict[str, list[tuple[int, np.ndarray]]], shard_bytes: int,
                 styles: list[str] = STYLES) -> Manifest:
    """Write each split's (style_id, notes) pieces into shards of about shard_bytes, and the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, records = [], []
    for split, pieces in splits.items():
        writer = SplitWriter(out_dir, split, shard_bytes)
        for i, (style_id, notes) in enumerate(pieces):
            writer.add(f"{split}/piece{i:05d}.mid", styles[style_id], style_id, notes)
        entries += writer.close()
        records.append(writer.all_records())
    return write_manifest(out_dir, entries, styles, np.concatenate(records))


def replicate(src_dir: Path, out_dir: Path, times: int, split: str = "train") -> Manifest:
    """A corpus of `times` copies of src_dir's shards of one split (same bytes, new names): for size-scaling tests."""
    src = Manifest.load(src_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in src.split(split) * times:
        name = f"{split}-{len(entries):06d}.tar"
        shutil.copyfile(Path(src_dir) / entry.name, out_dir / name)
        entries.append(dataclasses.replace(entry, name=name, sha256=sha256_file(out_dir / name)))
    lo, hi = src.split_range(split)
    records = np.tile(src.pieces.records(np.arange(lo, hi)), times)
    return write_manifest(out_dir, entries, list(src.styles.styles), records, src.representation)
