"""The on-disk form of a corpus: WebDataset tar shards of compact grid notes, and their manifest.

One sample per piece:
- `notes.bin`: the piece's canonical grid notes (`representation.NOTE_DTYPE`), column-wise and delta-coded, zlib'd.
  About 1-3 bytes per note after compression, against 48 x 3 x 4 = 576 bytes per step for a dense float32 roll;
- `json`: `{"style": "baroque/bach", "source": "relative/path.mid", "steps": T, "notes": K}`.

`manifest.json` beside the shards describes them (see `deepj.preprocess`); the loader reads only the manifest and the
shards it is handed, one block at a time.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from deepj.data.manifest import ShardEntry, ShardError
from deepj.music.representation import NOTE_DTYPE, empty_notes

NOTES_KEY = "notes.bin"
META_KEY = "json"
REPORT = "report.json"
_MAGIC = b"DJN1"




def encode_notes(notes: np.ndarray) -> bytes:
    """Canonical grid notes -> compact bytes. Columns are stored apart (they compress far better than rows)."""
    k = len(notes)
    start = notes["start"].astype(np.int64)
    dstart = np.diff(start, prepend=0).astype(np.uint32)  # sorted by start, so deltas are small and non-negative
    dur = (notes["end"].astype(np.int64) - start).astype(np.uint32)
    body = b"".join(
        [
            np.uint32(k).tobytes(),
            dstart.tobytes(),
            dur.tobytes(),
            notes["pitch"].astype(np.uint8).tobytes(),
            notes["velocity"].astype(np.uint8).tobytes(),
        ]
    )
    return _MAGIC + zlib.compress(body, 6)


def decode_notes(blob: bytes) -> np.ndarray:
    if not blob.startswith(_MAGIC):
        raise ShardError("notes blob has no DJN1 header")
    try:
        body = zlib.decompress(blob[len(_MAGIC) :])
    except zlib.error as e:
        raise ShardError(f"notes blob does not decompress: {e}") from None
    k = int(np.frombuffer(body[:4], dtype=np.uint32)[0])
    if len(body) != 4 + k * 10:
        raise ShardError(f"notes blob holds {len(body)} bytes, expected {4 + k * 10} for {k} notes")
    if k == 0:
        return empty_notes()
    o = 4
    dstart = np.frombuffer(body, dtype=np.uint32, count=k, offset=o)
    dur = np.frombuffer(body, dtype=np.uint32, count=k, offset=o + 4 * k)
    pitch = np.frombuffer(body, dtype=np.uint8, count=k, offset=o + 8 * k)
    vel = np.frombuffer(body, dtype=np.uint8, count=k, offset=o + 9 * k)
    out = np.empty(k, dtype=NOTE_DTYPE)
    start = np.cumsum(dstart, dtype=np.int64)
    out["start"] = start
    out["end"] = start + dur
    out["pitch"] = pitch
    out["velocity"] = vel
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def piece_key(source: str) -> str:
    """A stable WebDataset key for a piece (keys may not contain dots: WebDataset splits fields at the first one)."""
    return hashlib.sha1(source.encode()).hexdigest()[:20]


class SplitWriter:
    """Writes one split's pieces into `{split}-NNNNNN.tar` shards of about `shard_bytes` each, and describes them.

    Each shard is written under a temporary name and renamed when complete, so a killed run never leaves a
    half-written shard under a real name. Tar headers carry a fixed mtime, so the same input gives the same bytes.
    """

    def __init__(self, out_dir: str | Path, split: str, shard_bytes: int):
        import webdataset as wds

        self._wds = wds
        self.out_dir, self.split, self.shard_bytes = Path(out_dir), split, max(int(shard_bytes), 1)
        self.entries: list[ShardEntry] = []
        self._writer = None
        self._fh = None

    def _open(self) -> None:
        self._name = f"{self.split}-{len(self.entries):06d}.tar"
        self._path = self.out_dir / self._name
        self._fh = open(self.out_dir / (self._name + ".tmp"), "wb")
        # mtime an int: a float mtime makes tarfile add a 1 kB pax header per member
        self._writer = self._wds.TarWriter(self._fh, mtime=0)
        self._steps: list[int] = []  # of each piece in this shard, in tar order
        self._styles: list[int] = []
        self._notes = 0

    def add(self, source: str, style: str, style_id: int, notes: np.ndarray) -> None:
        if self._writer is None:
            self._open()
        steps = int(notes["end"].max()) if len(notes) else 0
        meta = {"style": style, "style_id": style_id, "source": source, "steps": steps, "notes": len(notes)}
        self._writer.write({"__key__": piece_key(source), NOTES_KEY: encode_notes(notes), META_KEY: meta})
        self._steps.append(steps)
        self._styles.append(style_id)
        self._notes += len(notes)
        if self._fh.tell() >= self.shard_bytes:
            self._finish()

    def _finish(self) -> None:

        self._writer.close()  # closes the file object too
        tmp = self.out_dir / (self._name + ".tmp")
        tmp.replace(self._path)
        self.entries.append(ShardEntry(name=self._name, split=self.split, pieces=len(self._steps),
                                       steps=sum(self._steps), notes=self._notes, piece_steps=tuple(self._steps),
                                       piece_styles=tuple(self._styles), bytes=self._path.stat().st_size,
                                       sha256=sha256_file(self._path)))
        self._writer = self._fh = None

    def close(self) -> list[ShardEntry]:
        if self._writer is not None:
            self._finish()
        return self.entries
