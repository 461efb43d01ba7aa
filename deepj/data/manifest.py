"""`manifest.json`, the interface between preprocessing and everything that reads shards, as a type.

Preprocessing writes it (`Manifest.write`); training, evaluation, the benchmarks and the launcher read it once with
`Manifest.load`, which validates it and refuses what it cannot use with a message that names the file. Nothing reads
the JSON by string key anywhere else.

Format 2 keeps what grows with the corpus out of the JSON: manifest.json describes the shards (a few lines each), and
`pieces.npy` beside it holds one fixed-size record per piece (`PIECE_DTYPE`: where its notes lie in its shard, their
crc32, its steps, notes and style slot), in manifest shard order and tar order within. manifest.json gives the index's
size and sha256, so the index is verified once when loaded, and each piece is verified by its crc32 when read. Loaded,
a piece costs 10 bytes (steps, notes, style columns); the rest of its record is read from the file when needed
(`PieceTable.records`), so a corpus of millions of pieces loads in megabytes, not in Python lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepj.music.constants import STEPS_PER_BEAT
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
GRID = "beat-relative 16th notes"
INDEX = "pieces.npy"
# One record per piece (packed, 26 bytes). offset/length: the bytes of its notes.bin member in its shard.
PIECE_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4"), ("steps", "<u4"), ("notes", "<u4"),
                        ("style", "<u2")])
_INDEX_CHUNK = 1 << 16  # records read at a time when loading the index: ~1.7 MB, whatever the corpus size


class ShardError(Exception):
    """A shard or manifest that cannot be read; the message names the file."""


SPLITS = ("train", "val", "test")
# The most steps a manifest may give one piece: preprocess's --max-steps cannot exceed it, and the loader sizes its
# window arrays from these numbers before reading any shard, so a garbled one (1e12) must be refused, not allocated.
# 2**24 = 16.7 M steps is 580 hours at 120 bpm, 800 times MAESTRO's longest performance.
MAX_PIECE_STEPS = 2**24
_ENTRY_KEYS = ("name", "split", "pieces", "steps", "notes", "bytes")
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


def _str(v: Any, where: str, key: str) -> str:
    if not isinstance(v, str):
        raise ShardError(f"{where}: {key} is {_kind(v)}, a string is expected")
    return v


@dataclass(frozen=True)
class ShardEntry:
    """One tar shard of one split: how many pieces, steps and notes it holds (each piece in the index), its size and
    checksum."""

    name: str  # e.g. "train-000003.tar", beside manifest.json
    split: str  # "train", "val" or "test"
    pieces: int
    steps: int
    notes: int
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, d: Any, where: str, key: str = "shards[?]") -> ShardEntry:
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
        sha = _str(d.get("sha256", ""), where, f"{key}.sha256")
        if sha and not _SHA256.fullmatch(sha):
            raise ShardError(f"{where}: {key}.sha256 {sha[:80]!r} is not 64 hex digits")
        return cls(name=name, split=split, pieces=_int(d["pieces"], where, f"{key}.pieces"),
                   steps=_int(d["steps"], where, f"{key}.steps"), notes=_int(d["notes"], where, f"{key}.notes"),
                   bytes=_int(d["bytes"], where, f"{key}.bytes"), sha256=sha)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PieceTable:
    """Every piece of a shard folder, in manifest shard order and tar order within: the columns a loader plans with
    (steps, notes, style: 10 bytes a piece) in memory, and each piece's full record (`PIECE_DTYPE`) on demand, from
    memory when the table was built from records (preprocessing, merging) or read from the index file (a loaded
    manifest: a pread per record, so that reading every piece in an epoch does not map the whole index in)."""

    def __init__(self, steps: np.ndarray, notes: np.ndarray, styles: np.ndarray, *, records: np.ndarray | None = None,
                 file: Path | None = None, data_offset: int = 0):
        self.steps = np.asarray(steps, dtype=np.uint32)  # (P,)
        self.notes = np.asarray(notes, dtype=np.uint32)  # (P,)
        self.styles = np.asarray(styles, dtype=np.uint16)  # (P,) leaf style slot
        self._records, self.file, self._data_offset = records, file, data_offset
        self._fd: int | None = None
        self._fd_pid = -1

    @classmethod
    def from_records(cls, records: np.ndarray) -> PieceTable:
        records = np.asarray(records, dtype=PIECE_DTYPE)
        return cls(records["steps"], records["notes"], records["style"], records=records)

    @classmethod
    def empty(cls) -> PieceTable:
        return cls.from_records(np.zeros(0, dtype=PIECE_DTYPE))

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PieceTable) and np.array_equal(self.all_records(), other.all_records())

    __hash__ = None  # mutable arrays inside

    def __del__(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def __getstate__(self) -> dict[str, Any]:  # a spawned DataLoader worker opens the file itself
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}

    def records(self, idx: np.ndarray) -> np.ndarray:
        """The full records of pieces `idx` (global piece indices)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._records is not None:
            return self._records[idx]
        if self._fd is None or self._fd_pid != os.getpid():  # a forked worker must not share the parent's offset
            self._fd, self._fd_pid = os.open(self.file, os.O_RDONLY), os.getpid()
        size = PIECE_DTYPE.itemsize
        if len(idx) > 1 and idx[-1] - idx[0] == len(idx) - 1 and (np.diff(idx) == 1).all():  # a range: one read
            raw = os.pread(self._fd, size * len(idx), self._data_offset + int(idx[0]) * size)
        else:
            raw = b"".join(os.pread(self._fd, size, self._data_offset + int(i) * size) for i in idx)
        if len(raw) != size * len(idx):
            raise ShardError(f"{self.file}: ends inside the records of pieces {idx.tolist()[:5]} (truncated index)")
        return np.frombuffer(raw, dtype=PIECE_DTYPE)

    def all_records(self) -> np.ndarray:
        """Every record (for writers and small tables: O(pieces) memory)."""
        return self._records if self._records is not None else self.records(np.arange(len(self)))

    def npy_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(self.all_records()), allow_pickle=False)
        return buf.getvalue()

    @classmethod
    def read(cls, path: Path, where: str, shards: tuple[ShardEntry, ...], num_styles: int, want_bytes: int,
             want_sha256: str) -> PieceTable:
        """Load and verify the index: its size and sha256 as manifest.json gives them, then every record against
        its shard entry (counts and sums, steps in range, style slot known, bytes inside the shard). Read in chunks,
        so that loading costs the 10 bytes a piece it keeps."""
        if not path.is_file():
            raise ShardError(f"{where}: the piece index {path.name} is missing (listed in manifest.json)")
        if path.stat().st_size != want_bytes:
            raise ShardError(f"{path}: {path.stat().st_size} bytes, manifest.json says {want_bytes} (truncated or "
                             "replaced piece index)")
        first = np.concatenate([[0], np.cumsum([e.pieces for e in shards], dtype=np.int64)])
        total = int(first[-1])
        steps, notes = np.empty(total, np.uint32), np.empty(total, np.uint32)
        styles = np.empty(total, np.uint16)
        sum_steps, sum_notes = np.zeros(len(shards), np.int64), np.zeros(len(shards), np.int64)
        shard_bytes = np.array([e.bytes for e in shards], dtype=np.int64)
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version}")
                shape, fortran, dtype = read_header(f)
            except (ValueError, OSError, SyntaxError) as e:
                raise ShardError(f"{path}: not a piece index ({e})") from None
            if dtype != PIECE_DTYPE or fortran or shape != (total,):
                raise ShardError(f"{path}: holds {shape} records of {dtype}, manifest.json's shards need ({total},) "
                                 f"of {PIECE_DTYPE}")
            data_offset = f.tell()
            f.seek(0)
            sha.update(f.read(data_offset))
            for lo in range(0, total, _INDEX_CHUNK):
                raw = f.read(min(_INDEX_CHUNK, total - lo) * PIECE_DTYPE.itemsize)
                sha.update(raw)
                rec = np.frombuffer(raw, dtype=PIECE_DTYPE)
                hi = lo + len(rec)
                shard = np.searchsorted(first, np.arange(lo, hi), side="right") - 1  # (chunk,)
                bad = np.flatnonzero((rec["steps"] > MAX_PIECE_STEPS) | (rec["style"] >= num_styles)
                                     | (rec["offset"].astype(np.int64) + rec["length"] > shard_bytes[shard]))
                if len(bad):
                    k = int(bad[0])
                    raise ShardError(f"{path}: record {lo + k} ({shards[shard[k]].name}) has steps "
                                     f"{rec['steps'][k]} (at most {MAX_PIECE_STEPS}), style {rec['style'][k]} "
                                     f"(of {num_styles}), bytes [{rec['offset'][k]}, "
                                     f"{int(rec['offset'][k]) + int(rec['length'][k])}) (shard of "
                                     f"{shard_bytes[shard[k]]}): out of range")
                steps[lo:hi], notes[lo:hi], styles[lo:hi] = rec["steps"], rec["notes"], rec["style"]
                sum_steps += np.bincount(shard, weights=rec["steps"], minlength=len(shards)).astype(np.int64)
                sum_notes += np.bincount(shard, weights=rec["notes"], minlength=len(shards)).astype(np.int64)
            sha.update(f.read())
        if sha.hexdigest() != want_sha256:
            raise ShardError(f"{path}: sha256 {sha.hexdigest()[:12]}... differs from manifest.json's "
                             f"{want_sha256[:12]}... (corrupt piece index)")
        for i, e in enumerate(shards):
            if sum_steps[i] != e.steps or sum_notes[i] != e.notes:
                raise ShardError(f"{path}: the records of {e.name} hold {sum_steps[i]} steps and {sum_notes[i]} notes,"
                                 f" manifest.json says {e.steps} and {e.notes}")
        return cls(steps, notes, styles, file=path, data_offset=data_offset)


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
    """A shard folder's description: representation, style tree, shards per split, the pieces in them, totals, and the
    settings used."""

    dir: Path
    representation: ReprConfig  # the pitch range [min_pitch, max_pitch) of every roll cut from these shards
    styles: StyleTree
    shards: tuple[ShardEntry, ...]
    totals: dict[str, Any]  # per split: pieces, steps, notes, shards, bytes; files_seen, files_skipped
    settings: dict[str, Any]  # the preprocessing settings, as given (compared on re-runs, shown to users)
    tool: str = ""
    pieces: PieceTable = field(default_factory=PieceTable.empty)  # every piece, shard after shard
    hash: str = field(init=False)  # identity of the corpus for checkpoints: styles, pitch range, shard checksums

    def __post_init__(self) -> None:
        if len(self.pieces) != sum(s.pieces for s in self.shards):
            raise ShardError(f"{self.path}: the piece index holds {len(self.pieces)} pieces, the shards "
                             f"{sum(s.pieces for s in self.shards)}")
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

    def shard_first_piece(self) -> np.ndarray:
        """(shards + 1,) index of each shard's first piece in `pieces`; the last is the number of pieces."""
        return np.concatenate([[0], np.cumsum([s.pieces for s in self.shards], dtype=np.int64)])

    def split_range(self, name: str) -> tuple[int, int]:
        """The split's pieces as a range [lo, hi) of `pieces` (a split's shards are listed together; both writers
        list them so, and a manifest that does not is refused)."""
        idx = [i for i, s in enumerate(self.shards) if s.split == name]
        if not idx:
            self.split(name)  # raises, naming the splits there are
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise ShardError(f"{self.path}: the shards of split {name!r} are not listed together")
        first = self.shard_first_piece()
        return int(first[idx[0]]), int(first[idx[-1] + 1])

    def piece_steps(self, split: str) -> np.ndarray:
        """(P,) steps of each piece of a split, in loader order (manifest shard order, tar order within)."""
        lo, hi = self.split_range(split)
        return self.pieces.steps[lo:hi].astype(np.int64)

    def piece_styles(self, split: str) -> np.ndarray:
        """(P,) leaf style slot of each piece of a split, in the same order."""
        lo, hi = self.split_range(split)
        return self.pieces.styles[lo:hi].astype(np.int64)

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
            upgrade = (f"; give it its piece index in place with: python -m deepj.preprocess_merge upgrade {shard_dir}"
                       if version == 1 else "")
            raise ShardError(f"{path}: format_version {raw.get('format_version')!r}, this deepj reads {FORMAT_VERSION}"
                             f"; preprocess the corpus again with this version{upgrade}")
        missing = [k for k in ("representation", "styles", "shards", "totals") if k not in raw]
        if missing:
            raise ShardError(f"{path} lacks {', '.join(missing)}; preprocess the corpus again")
        where = str(path)
        rep = raw["representation"]
        if not isinstance(rep, dict):
            raise ShardError(f"{path}: representation is {_kind(rep)}, a JSON object is expected")
        _int(rep.get("min_pitch"), where, "representation.min_pitch")
        _int(rep.get("max_pitch"), where, "representation.max_pitch")
        try:
            repr_cfg = ReprConfig.from_json(rep)
        except (ValueError, TypeError) as e:
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
        shards = tuple(ShardEntry.from_json(d, where, f"shards[{i}]") for i, d in enumerate(raw["shards"]))
        names = [s.name for s in shards]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ShardError(f"{path}: shard {dup} is listed twice")
        totals = _check_totals(raw["totals"], shards, where)
        settings = raw.get("settings", {})
        if not isinstance(settings, dict):
            raise ShardError(f"{path}: settings is {_kind(settings)}, a JSON object is expected")
        index = raw.get("index")
        if not isinstance(index, dict):
            raise ShardError(f"{path}: index is {_kind(index)}, a JSON object naming the piece index is expected")
        name = _str(index.get("file"), where, "index.file")
        if name in ("", ".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise ShardError(f"{where}: index.file {name!r} is not a file name beside the manifest")
        sha = _str(index.get("sha256"), where, "index.sha256")
        if not _SHA256.fullmatch(sha):
            raise ShardError(f"{where}: index.sha256 {sha[:80]!r} is not 64 hex digits")
        pieces = PieceTable.read(shard_dir / name, where, shards, len(styles),
                                 _int(index.get("bytes"), where, "index.bytes"), sha)
        return cls(dir=shard_dir, representation=repr_cfg, styles=StyleTree.from_leaves(styles), shards=shards,
                   totals=totals, settings=dict(settings), tool=_str(raw.get("tool", ""), where, "tool"),
                   pieces=pieces)

    def _representation_json(self) -> dict[str, Any]:
        return {**self.representation.to_json(), "steps_per_beat": STEPS_PER_BEAT, "grid": GRID}

    def to_json(self, index: bytes | None = None) -> dict[str, Any]:
        """The JSON; `index`: the piece index's bytes when already made (they are hashed into it)."""
        tree = self.styles.to_json()
        index = self.pieces.npy_bytes() if index is None else index
        return {"format_version": FORMAT_VERSION, "tool": self.tool, "representation": self._representation_json(),
                "settings": self.settings, "styles": tree["styles"], "levels": tree["levels"],
                "level_names": tree["level_names"], "shards": [s.to_json() for s in self.shards],
                "index": {"file": INDEX, "bytes": len(index), "sha256": hashlib.sha256(index).hexdigest()},
                "totals": self.totals}

    def write(self) -> Path:
        """Write pieces.npy, then manifest.json, each atomically (a reader sees the old one or the new one, never half
        of one; a manifest never names an index that is not complete)."""
        index = self.pieces.npy_bytes()
        tmp = self.dir / (INDEX + ".tmp")
        tmp.write_bytes(index)
        tmp.replace(self.dir / INDEX)
        tmp = self.path.with_name(MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.to_json(index), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.path)
        return self.path
