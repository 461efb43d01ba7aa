"""The on-disk form of a corpus: WebDataset tar shards of compact grid notes, and their manifest.

One sample per piece:
- `notes.bin`: the piece's canonical grid notes (`representation.NOTE_DTYPE`), column-wise and delta-coded, zlib'd.
  About 1-3 bytes per note after compression, against 48 x 3 x 4 = 576 bytes per step for a dense float32 roll;
- `json`: `{"style": "baroque/bach", "source": "relative/path.mid", "steps": T, "notes": K}`.

`manifest.json` beside the shards describes them (see `deepj.preprocess`); the loader reads only the manifest and the
shards it is handed, one block at a time.
"""

from __future__ import annotations

import errno
import hashlib
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

from deepj.data.manifest import MANIFEST, ShardEntry, ShardError
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
        self._writer.close()  # writes the tar's end; the file object stays open (tarfile did not open it)
        self._fh.close()  # flushed before the size and checksum are taken
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

    def abort(self) -> None:
        """After a failure (a full disk): close the shard being written without writing more; its .tmp file stays
        for the caller to remove (preprocess removes its whole staging folder)."""
        writer, fh = self._writer, self._fh
        self._writer = self._fh = None
        for close in ([writer.tarstream.fileobj.close] if writer is not None else []) + ([fh.close] if fh else []):
            try:
                close()  # tarfile's stream would otherwise retry its write when collected, and fail again
            except (OSError, ValueError):
                pass


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
