"""`manifest.json`, the interface between preprocessing and everything that reads shards, as a type.

Preprocessing writes it (`Manifest.write`); training, evaluation, the benchmarks and the launcher read it once with
`Manifest.load`, which validates it and refuses what it cannot use with a message that names the file. Nothing reads
the JSON by string key anywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
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


SPLITS = ("train", "val", "test")
# The most steps a manifest may give one piece: preprocess's --max-steps cannot exceed it, and the loader sizes its
# window arrays from these numbers before reading any shard, so a garbled one (1e12) must be refused, not allocated.
# 2**24 = 16.7 M steps is 580 hours at 120 bpm, 800 times MAESTRO's longest performance.
MAX_PIECE_STEPS = 2**24
_ENTRY_KEYS = ("name", "split", "pieces", "steps", "notes", "piece_steps", "piece_styles", "bytes")
_TOTAL_KEYS = ("pieces", "steps", "notes", "shards", "bytes")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _kind(v: Any) -> str:
    """What a JSON value is, for messages; short whatever its size."""
    if isinstance(v, dict):
        return f"an object of {len(v)} keys"
    if isinstance(v, list):
        return f"a list of {len(v)} items"
    if isinstance(v, str):
        return f"the string {v[:60]!r}"
    names = {bool: "the boolean", int: "the integer", float: "the number", type(None): "null"}
    return f"{names.get(type(v), type(v).__name__)} {json.dumps(v) if v is not None else ''}".strip()


def _int(v: Any, where: str, key: str, hi: int | None = None) -> int:
    """A JSON integer in [0, hi] (bool and 3.0 are refused: the writer never writes them)."""
    if type(v) is not int:
        raise ShardError(f"{where}: {key} is {_kind(v)}, a non-negative integer is expected")
    if v < 0 or (hi is not None and v > hi):
        raise ShardError(f"{where}: {key} is {v}, outside [0, {hi if hi is not None else 'inf'}]")
    return v


def _ints(v: Any, where: str, key: str, hi: int | None) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise ShardError(f"{where}: {key} is {_kind(v)}, a list of integers is expected")
    for i, t in enumerate(v):
        if type(t) is not int or t < 0 or (hi is not None and t > hi):
            _int(t, where, f"{key}[{i}]", hi)  # raises, naming the item
    return tuple(v)


def _str(v: Any, where: str, key: str) -> str:
    if not isinstance(v, str):
        raise ShardError(f"{where}: {key} is {_kind(v)}, a string is expected")
    return v


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
    def from_json(cls, d: Any, where: str, key: str = "shards[?]", num_styles: int | None = None) -> ShardEntry:
        """A shard entry, every field type- and range-checked before anything is built from it (ShardError naming
        the file and the key otherwise). `key` names the entry in messages (`shards[3]`)."""
        if not isinstance(d, dict):
            raise ShardError(f"{where}: {key} is {_kind(d)}, a JSON object is expected")
        missing = [k for k in _ENTRY_KEYS if k not in d]
        if missing:
            raise ShardError(f"{where}: {key} ({d.get('name', '?')!r}) lacks {', '.join(missing)}")
        name = _str(d["name"], where, f"{key}.name")
        if name in ("", ".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise ShardError(f"{where}: {key}.name {name!r} is not a file name beside the manifest")
        split = _str(d["split"], where, f"{key}.split")
        if split not in SPLITS:
            raise ShardError(f"{where}: {key}.split {split!r} is none of {', '.join(SPLITS)}")
        pieces = _int(d["pieces"], where, f"{key}.pieces")
        piece_steps = _ints(d["piece_steps"], where, f"{key}.piece_steps", MAX_PIECE_STEPS)
        piece_styles = _ints(d["piece_styles"], where, f"{key}.piece_styles",
                             None if num_styles is None else num_styles - 1)
        if not len(piece_steps) == len(piece_styles) == pieces:
            raise ShardError(f"{where}: entry {name} lists {pieces} pieces but {len(piece_steps)} "
                             f"piece_steps and {len(piece_styles)} piece_styles")
        steps = _int(d["steps"], where, f"{key}.steps")
        if steps != sum(piece_steps):
            raise ShardError(f"{where}: {key}.steps is {steps}, its piece_steps sum to {sum(piece_steps)}")
        sha = _str(d.get("sha256", ""), where, f"{key}.sha256")
        if sha and not _SHA256.fullmatch(sha):
            raise ShardError(f"{where}: {key}.sha256 {sha[:80]!r} is not 64 hex digits")
        return cls(name=name, split=split, pieces=pieces, steps=steps, notes=_int(d["notes"], where, f"{key}.notes"),
                   piece_steps=piece_steps, piece_styles=piece_styles, bytes=_int(d["bytes"], where, f"{key}.bytes"),
                   sha256=sha)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["piece_steps"], d["piece_styles"] = list(self.piece_steps), list(self.piece_styles)
        return d


def _check_totals(totals: Any, shards: tuple[ShardEntry, ...], where: str) -> dict[str, Any]:
    """totals: a JSON object; per split an object whose counts are those of its shard entries; files_* counts."""
    if not isinstance(totals, dict):
        raise ShardError(f"{where}: totals is {_kind(totals)}, a JSON object is expected")
    for key in ("files_seen", "files_skipped"):
        if key in totals:
            _int(totals[key], where, f"totals.{key}")
    for split in SPLITS:
        if split not in totals:
            continue
        t = totals[split]
        if not isinstance(t, dict):
            raise ShardError(f"{where}: totals.{split} is {_kind(t)}, a JSON object is expected")
        mine = [e for e in shards if e.split == split]
        want = {"pieces": sum(e.pieces for e in mine), "steps": sum(e.steps for e in mine),
                "notes": sum(e.notes for e in mine), "shards": len(mine), "bytes": sum(e.bytes for e in mine)}
        for key in _TOTAL_KEYS:
            if key in t and _int(t[key], where, f"totals.{split}.{key}") != want[key]:
                raise ShardError(f"{where}: totals.{split}.{key} is {t[key]}, its shard entries sum to {want[key]}")
    return dict(totals)


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
        version = raw.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise ShardError(f"{path}: format_version {raw.get('format_version')!r}, this deepj reads {FORMAT_VERSION}"
                             f"; preprocess the corpus again with this version")
        missing = [k for k in ("representation", "styles", "shards", "totals") if k not in raw]
        if missing:
            raise ShardError(f"{path} lacks {', '.join(missing)}; preprocess the corpus again")
        where = str(path)
        rep = raw["representation"]
        if not isinstance(rep, dict):
            raise ShardError(f"{path}: representation is {_kind(rep)}, a JSON object is expected")
        try:
            repr_cfg = ReprConfig(_int(rep.get("min_pitch"), where, "representation.min_pitch"),
                                  _int(rep.get("max_pitch"), where, "representation.max_pitch"))
        except ValueError as e:
            raise ShardError(f"{path}: representation {rep!r} is malformed ({e})") from None
        spb = _int(rep.get("steps_per_beat", STEPS_PER_BEAT), where, "representation.steps_per_beat")
        if spb != STEPS_PER_BEAT:
            raise ShardError(f"{path}: steps_per_beat {spb}, this deepj's grid has {STEPS_PER_BEAT}")
        styles = raw["styles"]
        if not isinstance(styles, list) or not all(isinstance(x, str) and x for x in styles):
            raise ShardError(f"{path}: styles is {_kind(styles)}, a list of style names is expected")
        if not styles:
            raise ShardError(f"{path} lists no styles")
        if len(set(styles)) != len(styles):
            dup = next(x for x in styles if styles.count(x) > 1)
            raise ShardError(f"{path}: styles lists {dup!r} twice")
        if not isinstance(raw["shards"], list):
            raise ShardError(f"{path}: shards is {_kind(raw['shards'])}, a list of shard entries is expected")
        shards = tuple(ShardEntry.from_json(d, where, f"shards[{i}]", len(styles)) for i, d in enumerate(raw["shards"]))
        names = [s.name for s in shards]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ShardError(f"{path}: shard {dup} is listed twice")
        totals = _check_totals(raw["totals"], shards, where)
        settings = raw.get("settings", {})
        if not isinstance(settings, dict):
            raise ShardError(f"{path}: settings is {_kind(settings)}, a JSON object is expected")
        return cls(dir=shard_dir, representation=repr_cfg, styles=StyleTree.from_leaves(styles), shards=shards,
                   totals=totals, settings=dict(settings), tool=_str(raw.get("tool", ""), where, "tool"))

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
