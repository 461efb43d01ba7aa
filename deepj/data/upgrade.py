"""Bring a shard folder of manifest format 1 (per-piece lists in manifest.json, no piece index) to format 2 in place,
without the MIDI files: `python -m deepj.preprocess_merge upgrade SHARD_DIR`.

The shards are not touched (so the corpus hash, and every checkpoint trained on them, stay valid): each is verified
against its sha256, its tar headers give each piece's byte range, and its pieces are decoded once to count their
notes and check them against the old manifest's steps and style slots. Then pieces.npy and the new manifest.json are
written, each atomically, the manifest last, while the folder is locked against preprocess and merge runs.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from pathlib import Path

import numpy as np

from deepj.data.manifest import MANIFEST, PIECE_DTYPE, Manifest, PieceTable, ShardEntry, ShardError
from deepj.data.shards import NOTES_KEY, OutputFolder, decode_notes, sha256_file
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree


def _shard_records(path: Path, entry: dict, where: str) -> np.ndarray:
    """Records of one format-1 shard, verified against its entry."""
    if sha256_file(path) != entry.get("sha256", ""):
        raise ShardError(f"{path}: sha256 differs from {where}'s (corrupt shard); preprocess the corpus again")
    out = []
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith("." + NOTES_KEY)]
        for k, m in enumerate(members):
            blob = tar.extractfile(m).read()
            notes = decode_notes(blob)
            steps = int(notes["end"].max()) if len(notes) else 0
            if k >= len(entry["piece_steps"]) or steps != entry["piece_steps"][k]:
                raise ShardError(f"{path}: piece {k} does not match {where}'s piece_steps")
            out.append((m.offset_data, m.size, zlib.crc32(blob), steps, len(notes), entry["piece_styles"][k]))
    if len(out) != entry["pieces"]:
        raise ShardError(f"{path}: holds {len(out)} pieces, {where} says {entry['pieces']}")
    return np.array(out, dtype=PIECE_DTYPE) if out else np.zeros(0, PIECE_DTYPE)


def upgrade(shard_dir: str | Path) -> Manifest:
    """Write pieces.npy and a format-2 manifest.json for a format-1 folder; -> the new manifest."""
    shard_dir = Path(shard_dir)
    path = shard_dir / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: cannot be read ({e})") from None
    if not isinstance(raw, dict) or raw.get("format_version") != 1:
        raise ShardError(f"{path}: format_version {raw.get('format_version') if isinstance(raw, dict) else None!r}; "
                         "only format 1 is upgraded")
    with OutputFolder(shard_dir, "upgrade"):
        entries, records = [], []
        for d in raw["shards"]:
            records.append(_shard_records(shard_dir / d["name"], d, str(path)))
            entries.append(ShardEntry(name=d["name"], split=d["split"], pieces=d["pieces"], steps=d["steps"],
                                      notes=int(records[-1]["notes"].sum()), bytes=d["bytes"], sha256=d["sha256"]))
        rep = raw["representation"]
        manifest = Manifest(dir=shard_dir, representation=ReprConfig.from_json(rep),
                            styles=StyleTree.from_leaves(raw["styles"]), shards=tuple(entries), totals=raw["totals"],
                            settings=raw.get("settings", {}), tool=raw.get("tool", ""),
                            pieces=PieceTable.from_records(np.concatenate(records)))
        manifest.write()
    return Manifest.load(shard_dir)
