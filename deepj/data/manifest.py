"""`manifest.json`, the interface between preprocessing and everything that reads shards, as a type.

Preprocessing writes it (`Manifest.write`); training, evaluation, the benchmarks and the launcher read it once with
`Manifest.load`, which validates it and refuses what it cannot use with a message that names the file. Nothing reads
the JSON by string key anywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepj.music.constants import STEPS_PER_BEAT
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
GRID = "beat-relative 16th notes"



class ShardError(Exception):
    """A shard or manifest that cannot be read; the message names the file."""


@dataclass(frozen=True)
class ShardEntry:
    """One tar shard of one split: its pieces' lengths and style slots, in the shard's order, and its checksum."""

    name: str  # e.g. "train-000003.tar", beside manifest.json
    split: str  # "train", "val" or "test"
    pieces: int
    steps: int
    notes: int
    piece_steps: tuple[int, ...]  # steps of each piece
    piece_styles: tuple[int, ...]  # leaf style slot of each piece
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> ShardEntry:
        try:
            entry = cls(name=str(d["name"]), split=str(d["split"]), pieces=int(d["pieces"]), steps=int(d["steps"]),
                        notes=int(d["notes"]), piece_steps=tuple(int(t) for t in d["piece_steps"]),
                        piece_styles=tuple(int(s) for s in d["piece_styles"]), bytes=int(d["bytes"]),
                        sha256=str(d.get("sha256", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{where}: shard entry {d.get('name', '?')!r} is malformed "
                             f"({type(e).__name__}: {e})") from None
        if not len(entry.piece_steps) == len(entry.piece_styles) == entry.pieces:
            raise ShardError(f"{where}: entry {entry.name} lists {entry.pieces} pieces but {len(entry.piece_steps)} "
                             f"piece_steps and {len(entry.piece_styles)} piece_styles")
        return entry

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["piece_steps"], d["piece_styles"] = list(self.piece_steps), list(self.piece_styles)
        return d


def windows_per_piece(steps: np.ndarray, seq_len: int, stride: int) -> np.ndarray:
    """A piece of T steps gives max(1, (T - seq_len) // stride + 1) windows (a short piece: one, padded)."""
    return np.maximum(1, (np.asarray(steps, dtype=np.int64) - seq_len) // stride + 1)


@dataclass(frozen=True)
class Manifest:
    """A shard folder's description: representation, style tree, shards per split, totals, and the settings used."""

    dir: Path
    representation: ReprConfig  # the pitch range [min_pitch, max_pitch) of every roll cut from these shards
    styles: StyleTree
    shards: tuple[ShardEntry, ...]
    totals: dict[str, Any]  # per split: pieces, steps, notes, shards, bytes; files_seen, files_skipped
    settings: dict[str, Any]  # the preprocessing settings, as given (compared on re-runs, shown to users)
    tool: str = ""
    hash: str = field(init=False)  # identity of the corpus for checkpoints: styles, pitch range, shard checksums

    def __post_init__(self) -> None:
        core = {"styles": list(self.styles.styles), "representation": self._representation_json(),
                "shards": [(s.name, s.sha256) for s in self.shards]}
        object.__setattr__(self, "hash", hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16])

    @property
    def num_notes(self) -> int:
        return self.representation.num_notes

    @property
    def path(self) -> Path:
        return self.dir / MANIFEST

    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def split(self, name: str) -> list[ShardEntry]:
        """The shards of one split, in manifest order; a split with none is refused, naming those there are."""
        mine = [s for s in self.shards if s.split == name]
        if not mine:
            raise ShardError(f"{self.path} has no shards for split {name!r} (it has: {self.splits()})")
        return mine

    def piece_steps(self, split: str) -> np.ndarray:
        """(P,) steps of each piece of a split, in loader order (manifest shard order, tar order within)."""
        return np.array([t for s in self.split(split) for t in s.piece_steps], dtype=np.int64)

    def piece_styles(self, split: str) -> np.ndarray:
        """(P,) leaf style slot of each piece of a split, in the same order."""
        return np.array([t for s in self.split(split) for t in s.piece_styles], dtype=np.int64)

    def windows(self, split: str, seq_len: int, stride: int) -> int:
        """Training windows of a split at this window length and stride."""
        return int(windows_per_piece(self.piece_steps(split), seq_len, stride).sum())

    # ----------------------------------------------------------------------------------------------- reading, writing
    @classmethod
    def load(cls, shard_dir: str | Path) -> Manifest:
        shard_dir = Path(shard_dir)
        path = shard_dir / MANIFEST
        if not path.is_file():
            raise ShardError(f"{path} not found: {shard_dir} is not a preprocessed shard folder "
                             f"(make one with: python -m deepj.preprocess <midi folder | csv | demo> {shard_dir})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ShardError(f"{path} is not a manifest (a JSON object expected)")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{path}: format_version {raw.get('format_version')!r}, this deepj reads {FORMAT_VERSION}"
                             f"; preprocess the corpus again with this version")
        missing = [k for k in ("representation", "styles", "shards", "totals") if k not in raw]
        if missing:
            raise ShardError(f"{path} lacks {', '.join(missing)}; preprocess the corpus again")
        rep = raw["representation"]
        try:
            repr_cfg = ReprConfig(int(rep["min_pitch"]), int(rep["max_pitch"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{path}: representation {rep!r} is malformed ({e})") from None
        if int(rep.get("steps_per_beat", STEPS_PER_BEAT)) != STEPS_PER_BEAT:
            raise ShardError(f"{path}: steps_per_beat {rep['steps_per_beat']}, this deepj's grid has {STEPS_PER_BEAT}")
        styles = [str(s) for s in raw["styles"]]
        if not styles:
            raise ShardError(f"{path} lists no styles")
        shards = tuple(ShardEntry.from_json(d, str(path)) for d in raw["shards"])
        for s in shards:
            bad = [k for k in s.piece_styles if not 0 <= k < len(styles)]
            if bad:
                raise ShardError(f"{path}: entry {s.name} has style slot {bad[0]}, the manifest lists {len(styles)}")
        return cls(dir=shard_dir, representation=repr_cfg, styles=StyleTree.from_leaves(styles), shards=shards,
                   totals=dict(raw["totals"]), settings=dict(raw.get("settings", {})), tool=str(raw.get("tool", "")))

    def _representation_json(self) -> dict[str, Any]:
        return {"min_pitch": self.representation.min_pitch, "max_pitch": self.representation.max_pitch,
                "steps_per_beat": STEPS_PER_BEAT, "grid": GRID}

    def to_json(self) -> dict[str, Any]:
        tree = self.styles.to_json()
        return {"format_version": FORMAT_VERSION, "tool": self.tool, "representation": self._representation_json(),
                "settings": self.settings, "styles": tree["styles"], "levels": tree["levels"],
                "level_names": tree["level_names"], "shards": [s.to_json() for s in self.shards],
                "totals": self.totals}

    def write(self) -> Path:
        """Write manifest.json atomically (a reader sees the old one or the new one, never half of one)."""
        tmp = self.path.with_name(MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.path)
        return self.path
