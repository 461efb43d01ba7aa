"""The on-disk form of a corpus: WebDataset tar shards of compact grid notes, and their manifest.

One sample per piece:
- `notes.bin`: the piece's canonical grid notes (`representation.NOTE_DTYPE`), column-wise and delta-coded, zlib'd.
  About 1-3 bytes per note after compression, against 48 x 3 x 4 = 576 bytes per step for a dense float32 roll;
- `json`: `{"style": "baroque/bach", "source": "relative/path.mid", "steps": T, "notes": K}`.

`manifest.json` and `pieces.npy` beside the shards describe them (deepj/data/manifest.py): the index gives each
piece's byte range in its shard and their crc32, so the loader reads the pieces it cuts windows from, nothing else.
The tars stay plain WebDataset shards, which any WebDataset pipeline can stream.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from deepj.data.manifest import MANIFEST, PIECE_DTYPE, ShardEntry, ShardError
from deepj.folder_lock import FolderBusy, lock_folder, unlock_folder
from deepj.music.representation import NOTE_DTYPE, empty_notes

NOTES_KEY = "notes.bin"
META_KEY = "json"
REPORT = "report.json"
_MAGIC = b"DJN1"
SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar(\.tmp)?$")  # ours, finished or left by a killed run
STAGING_PREFIX = ".building-"
OLD_SPOOL = ".preprocess-spool.tmp"  # what runs before OutputFolder spooled into; removed when found


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


_BLOCK = 512  # tar: a 512-byte header per member, data padded to 512


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def sample_meta(source: str, style: str, style_id: int, steps: int, notes: int) -> bytes:
    """A sample's json member, as bytes (what WebDataset's writer would make of the dict)."""
    meta = {"style": style, "style_id": style_id, "source": source, "steps": steps, "notes": notes}
    return json.dumps(meta).encode("utf-8")


def sample_size(meta: bytes, blob: bytes | int) -> int:
    """Bytes a sample takes in a shard: two members (json, notes.bin) with their headers; names are short and mtimes
    integers, so no pax header is ever added."""
    return 2 * _BLOCK + _padded(len(meta)) + _padded(blob if isinstance(blob, int) else len(blob))


def plan_shards(sizes: list[int], shard_bytes: int) -> list[tuple[int, int]]:
    """Samples [lo, hi) of each shard, for samples of `sizes` bytes in order: a shard ends with the sample that
    brings it to `shard_bytes` or more (as `SplitWriter` closes them), so that shards can be planned before any is
    written and written in parallel."""
    out, lo, size = [], 0, 0
    for i, n in enumerate(sizes):
        size += n
        if size >= shard_bytes:
            out.append((lo, i + 1))
            lo, size = i + 1, 0
    if lo < len(sizes):
        out.append((lo, len(sizes)))
    return out


class ShardWriter:
    """Writes one shard, `{name}` in `out_dir`, under a temporary name renamed when complete (a killed run never
    leaves a half-written shard under a real name); `finish()` -> its manifest entry and its pieces' index records.
    Tar headers carry a fixed mtime, so the same pieces give the same bytes."""

    def __init__(self, out_dir: str | Path, name: str, split: str):
        import webdataset as wds

        self.out_dir, self.name, self.split = Path(out_dir), name, split
        self.tmp = self.out_dir / (name + ".tmp")
        self._fh = open(self.tmp, "wb")
        # mtime an int: a float mtime makes tarfile add a 1 kB pax header per member
        self._writer = wds.TarWriter(self._fh, mtime=0)
        self._records: list[tuple[int, int, int, int, int, int]] = []

    @property
    def size(self) -> int:
        """Bytes of the samples written so far (the tar's own count: its stream buffers what reaches the file)."""
        return self._writer.tarstream.offset

    def add(self, source: str, style: str, style_id: int, blob: bytes, steps: int, notes: int) -> None:
        """One piece: its encoded notes (`encode_notes`), steps and note count."""
        meta = sample_meta(source, style, style_id, steps, notes)
        before = self.size
        self._writer.write({"__key__": piece_key(source), META_KEY: meta, NOTES_KEY: blob})
        end = self.size
        if end - before != sample_size(meta, blob):  # plan_shards relies on it; a tar library change would break it
            raise RuntimeError(f"{self.tmp}: a sample took {end - before} bytes, {sample_size(meta, blob)} expected")
        # notes.bin sorts after json, so its data is the last member's: it ends, padded, where the sample ends.
        self._records.append((end - _padded(len(blob)), len(blob), zlib.crc32(blob), steps, notes, style_id))

    def finish(self) -> tuple[ShardEntry, np.ndarray]:
        self._writer.close()  # writes the tar's end; the file object stays open (tarfile did not open it)
        self._fh.close()  # flushed before the size and checksum are taken
        path = self.out_dir / self.name
        self.tmp.replace(path)
        rec = np.array(self._records, dtype=PIECE_DTYPE) if self._records else np.zeros(0, PIECE_DTYPE)
        entry = ShardEntry(name=self.name, split=self.split, pieces=len(rec), steps=int(rec["steps"].sum()),
                           notes=int(rec["notes"].sum()), bytes=path.stat().st_size, sha256=sha256_file(path))
        return entry, rec

    def abort(self) -> None:
        """After a failure (a full disk): close without writing more; the .tmp file stays for the caller to remove
        (preprocess removes its whole staging folder)."""
        for close in (self._writer.tarstream.fileobj.close, self._fh.close):
            try:
                close()  # tarfile's stream would otherwise retry its write when collected, and fail again
            except (OSError, ValueError):
                pass


class SplitWriter:
    """Writes one split's pieces into `{split}-NNNNNN.tar` shards of about `shard_bytes` each, one after the other,
    and collects their entries and index records (`close()`). deepj.preprocess plans the same shards with
    `plan_shards` and writes them in parallel; this is the writer for one process (tests, small corpora)."""

    def __init__(self, out_dir: str | Path, split: str, shard_bytes: int):
        self.out_dir, self.split, self.shard_bytes = Path(out_dir), split, max(int(shard_bytes), 1)
        self.entries: list[ShardEntry] = []
        self.records: list[np.ndarray] = []  # per shard
        self._shard: ShardWriter | None = None

    def add(self, source: str, style: str, style_id: int, notes: np.ndarray) -> None:
        self.add_encoded(source, style, style_id, encode_notes(notes), int(notes["end"].max()) if len(notes) else 0,
                         len(notes))

    def add_encoded(self, source: str, style: str, style_id: int, blob: bytes, steps: int, notes: int) -> None:
        if self._shard is None:
            self._shard = ShardWriter(self.out_dir, f"{self.split}-{len(self.entries):06d}.tar", self.split)
        self._shard.add(source, style, style_id, blob, steps, notes)
        if self._shard.size >= self.shard_bytes:
            self._finish()

    def _finish(self) -> None:
        entry, rec = self._shard.finish()
        self.entries.append(entry)
        self.records.append(rec)
        self._shard = None

    def close(self) -> list[ShardEntry]:
        if self._shard is not None:
            self._finish()
        return self.entries

    def all_records(self) -> np.ndarray:
        return np.concatenate(self.records) if self.records else np.zeros(0, PIECE_DTYPE)

    def abort(self) -> None:
        if self._shard is not None:
            self._shard.abort()
            self._shard = None


# --------------------------------------------------------------------------------------------------- output folder

class OutputError(Exception):
    """An output folder that cannot be used (a file, not writable, in use by another run); callers exit 2."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # a folder on a file system that cannot sync directories: nothing more to do
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


class OutputFolder:
    """A shard folder taken by one run (preprocess, preprocess_merge): a lock for the run's life, a private staging
    folder inside it, and a commit that puts the new output in place only once all of it is written.

    - Lock: fcntl.flock on OUT/.lock, held until `close()` or the process's death (the OS drops it then, so a killed
      run never blocks the next). A second run is refused at once, naming the holder (pid, host, start), which the
      holder writes into the lock file; the file is removed when the run ends.
    - Staging: OUT/.building-<pid>-<random>/, on the same file system as the shards, so that the commit is renames
      only. Every temporary file of the run lives there (a name no other run uses); a killed run's staging folder is
      removed by the next run that takes the lock.
    - Commit: the old manifest.json is moved aside first (a reader never sees it beside new shards), each new file
      replaces its old namesake (moved aside too), the new manifest comes last; stale shards are removed after. Any
      error during the commit moves everything back, so a failure anywhere leaves the old folder as it was. A kill
      in the middle of the commit (a few renames) leaves no manifest.json: readers refuse the folder, the next run
      rebuilds it.
    """

    def __init__(self, out_dir: str | Path, what: str = "preprocess"):
        self.dir, self.what = Path(out_dir), what
        self.staging: Path | None = None
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> OutputFolder:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def open(self) -> None:
        out = self.dir
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} is a file, not a folder; give a folder (new or made by deepj) for the shards")
        self._created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output folder {out}: {e.strerror or e}") from None
        try:
            self._lock()
            for p in sorted(out.glob(STAGING_PREFIX + "*")):  # a killed run's: no run uses them while we hold the lock
                shutil.rmtree(p, ignore_errors=True)
            (out / OLD_SPOOL).unlink(missing_ok=True)
            self.staging = out / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            self.staging.mkdir()
        except OSError as e:
            self.close(failed=True)
            raise OutputError(f"cannot write to the output folder {out} ({e.strerror or e}); give a folder you can "
                              "write to") from None
        except OutputError:
            self.close(failed=True)
            raise

    def _lock(self) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        try:
            self._fd = lock_folder(self.dir, f"pid {os.getpid()} on host {socket.gethostname()}, since {when}")
        except FolderBusy as e:
            raise OutputError(f"{self.dir} is in use by another {self.what} run ({e or 'holder unknown'}); wait for it "
                              "to end, or choose another OUTPUT_DIR") from None
        if self._fd is None:  # a file system without locks (some NFS mounts): refusing every run there would be worse
            print(f"warning: {self.dir} cannot be locked; make sure no other run writes into it", file=sys.stderr)

    def close(self, failed: bool = False) -> None:
        """Remove the staging folder and release the lock; after a failure, a folder this run created goes too."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._fd is not None:
            unlock_folder(self.dir, self._fd, remove=True)
            self._fd = None
        if failed and self._created:
            try:
                self.dir.rmdir()  # only if empty: a run that fails leaves no folder it made
            except OSError:
                pass

    def stale_shards(self, keep: set[str]) -> list[str]:
        """Our shard files in the folder (finished or left by a killed run) that the new output does not hold."""
        return sorted(p.name for p in self.dir.iterdir() if SHARD_NAME.match(p.name) and p.name not in keep
                      and p.is_file())

    def commit(self, files: list[str], stale: list[str]) -> None:
        """Move `files` (names in the staging folder) and then the staged manifest.json into the folder; then remove
        the `stale` shards. All or nothing up to the manifest (see the class docstring)."""
        assert self.staging is not None
        names = [*files, MANIFEST]
        for name in names:  # on disk before any rename makes them the output
            _fsync(self.staging / name)
        aside = self.staging / ".old"
        aside.mkdir()
        moved: list[str] = []  # old files moved aside, in order
        placed: list[str] = []  # new files moved in, in order
        try:
            if (self.dir / MANIFEST).exists():
                os.replace(self.dir / MANIFEST, aside / MANIFEST)
                moved.append(MANIFEST)
            for name in names:
                if name != MANIFEST and (self.dir / name).exists():
                    os.replace(self.dir / name, aside / name)
                    moved.append(name)
                os.replace(self.staging / name, self.dir / name)
                placed.append(name)
            _fsync(self.dir)
        except BaseException:
            for name in reversed(placed):
                os.replace(self.dir / name, self.staging / name)
            for name in reversed(moved):
                os.replace(aside / name, self.dir / name)
            raise
        for name in stale:
            try:
                (self.dir / name).unlink(missing_ok=True)
            except OSError as e:  # the new output is complete; a file left over is only clutter
                print(f"warning: could not remove the stale shard {self.dir / name}: {e.strerror}", file=sys.stderr)
