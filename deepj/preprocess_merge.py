"""Preprocess a large corpus in slices (a Slurm array, slurm/preprocess.sbatch) and merge them into one shard folder.

    python -m deepj.preprocess_merge slice INPUT WORK --index I --count K [preprocess options ...]
    python -m deepj.preprocess_merge slice INPUT WORK --index I --list FILES.txt [preprocess options ...]
    python -m deepj.preprocess_merge merge WORK OUTPUT_DIR [--remove-slices]
    python -m deepj.preprocess_merge upgrade SHARD_DIR   (format 1 -> 2: adds the piece index; deepj/data/upgrade.py)

`slice` takes every K-th MIDI file of INPUT (sorted source names, starting at I), or the source names listed in a
file, and mirrors them as symlinks under WORK/slice-NNNN/input: the same relative paths, so every piece keeps its
source name, its style (the folder path) and its hash-assigned split; for a MAESTRO or ATEPP CSV the slice gets the
CSV's rows for its files (official splits kept) and links to them; for Aria-MIDI's metadata.json, the whole file and
links to its files, dealt out by recording so that a recording's segments (and copies of them) share a slice. It
then runs deepj.preprocess (the CLI, in-process) into WORK/slice-NNNN/shards and writes WORK/slice-NNNN/DONE. A
slice in which no file is usable is a result, not an error (preprocess exit 1: its report still counts the skipped
files).

`merge` checks that every slice is DONE and that all were made with the same settings, then writes OUTPUT_DIR:
- shards renamed `{split}-NNNNNN.tar` in (split, slice, shard) order, so names stay unique;
- one style vocabulary: the sorted union of the slices' styles, with `levels`/`level_names` recomputed;
- style ids remapped. A slice numbers its styles within its own vocabulary, and the id is stored twice: in the
  piece index (pieces.npy, what the loader uses) and in each sample's json `style_id` (what a WebDataset pipeline
  reading the tars sees). Both must agree, so a shard whose ids change is rewritten with the new `style_id`
  (deepj.data.shards.ShardWriter, as preprocess writes shards) and gets a new sha256 and new index records (its json
  members change length); a shard whose ids are unchanged is hard-linked (or copied) with its records;
- a piece whose notes are another slice's, byte for byte, written once (the first in source order), as one run
  writes it: the others' shards are rewritten without it, and report.json lists it as a `duplicate`;
- totals and report.json summed over the slices (report.json also lists the slices). The manifest is written last.
OUTPUT_DIR is taken as preprocess takes it (deepj.data.shards.OutputFolder): locked for the merge, built in a private
folder inside it and put in place only when complete, so a merge that fails leaves an earlier output as it was.
The merged folder holds the same pieces, styles and splits as one preprocess run over INPUT, packed into different
shards; one difference: preprocess moves the smallest-hash piece to val when a run would otherwise have no val
piece, which a small slice can trigger for one of its pieces.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deepj import __version__
from deepj.data.manifest import INDEX, MANIFEST, PIECE_DTYPE, Manifest, PieceTable, ShardEntry, ShardError
from deepj.data.shards import META_KEY, NOTES_KEY, REPORT, OutputError, OutputFolder, ShardWriter
from deepj.music.styles import StyleTree

DONE = "DONE"
SPLITS = ("train", "val", "test")


class MergeError(Exception):
    """Slices that cannot be merged (missing, unfinished, made with other settings); the message names the slice."""


def slice_dir(work: Path, index: int) -> Path:
    return Path(work) / f"slice-{index:04d}"


# ------------------------------------------------------------------------------------------------------------ slice

def _select(names: list[str], index: int | None, count: int | None, listed: set[str] | None) -> list[str]:
    if listed is not None:
        return [n for n in names if n in listed]
    return names[index::count]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(src), dst)


def make_slice_input(input_spec: str, dst: Path, *, index: int | None = None, count: int | None = None,
                     listed: set[str] | None = None) -> int:
    """Mirror this slice's files under `dst` (emptied first); returns how many files (or CSV rows) it holds."""
    from deepj.corpus.atepp import locate
    from deepj.corpus.folder import iter_midi_paths

    src = Path(input_spec)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if src.is_dir():
        files = {Path(os.path.relpath(p, src)).as_posix(): p for p, _ in iter_midi_paths(src)}
        chosen = _select(sorted(files), index, count, listed)
        for name in chosen:
            _link(files[name], dst / name)
        return len(chosen)
    if src.suffix.lower() in (".json", ".jsonl") and src.is_file():
        # Aria-MIDI: the metadata file whole (it is read by recording id), and this slice's files under its folder.
        # Files are dealt out by recording (`<id>_<segment>.mid`): a slice holding some of a recording's segments
        # would report the others missing, and copies of one segment in two folders must meet in one slice, where
        # the reader keeps one.
        from deepj.corpus.aria import FILE_NAME

        files = {Path(os.path.relpath(p, src.parent)).as_posix(): p for p, _ in iter_midi_paths(src.parent)}
        by_recording: dict[str, list[str]] = {}
        for rel in sorted(files):
            match = FILE_NAME.fullmatch(Path(rel).name)
            by_recording.setdefault(f"{int(match[1]):020d}" if match else Path(rel).name, []).append(rel)
        if listed is not None:
            chosen = _select(sorted(files), index, count, listed)
        else:
            chosen = [rel for key in _select(sorted(by_recording), index, count, None) for rel in by_recording[key]]
        for rel in chosen:
            _link(files[rel], dst / rel)
        shutil.copyfile(src, dst / src.name)
        return len(chosen)
    if src.suffix.lower() == ".csv" and src.is_file():
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        column = next((c for c in ("midi_filename", "midi_path") if c in fields), None)  # MAESTRO's, ATEPP's
        if column is None:
            raise MergeError(f"{src}: no midi_filename (MAESTRO) or midi_path (ATEPP) column")
        by_name: dict[str, list[dict]] = {}
        for row in rows:
            by_name.setdefault((row.get(column) or "").strip(), []).append(row)
        chosen = _select(sorted(by_name), index, count, listed)
        with open(dst / src.name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for name in chosen:
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise MergeError(f"{src}: {column} {name!r} leaves the CSV's folder; slicing needs paths "
                                     "relative to the CSV")
                w.writerows(by_name[name])  # a duplicated row stays duplicated: preprocess reports it
                found = locate(src.parent, name) if name else None  # on disk perhaps in another Unicode form
                if found is not None:
                    _link(found, dst / found.relative_to(src.parent))
        return len(chosen)
    raise MergeError(f"{input_spec}: slicing needs a MIDI folder, a MAESTRO or ATEPP .csv or Aria-MIDI's metadata "
                     "(not the demo corpus)")


def run_slice(input_spec: str, work: Path, *, index: int, count: int | None, list_file: str | None,
              preprocess_args: list[str]) -> int:
    from deepj import preprocess

    if list_file is None and (count is None or not 0 <= index < count):
        raise MergeError(f"--index {index} --count {count}: need 0 <= index < count (or --list FILE)")
    listed = None
    if list_file is not None:
        listed = {line.strip() for line in Path(list_file).read_text().splitlines() if line.strip()}
    here = slice_dir(work, index)
    for other in sorted(Path(work).glob(f"slice-*/{DONE}")):  # a rerun task must slice as its siblings did
        theirs = json.loads(other.read_text())
        if other.parent != here and (theirs["count"], theirs["list"] is None) != (count, list_file is None):
            raise MergeError(f"{other.parent} was cut with --count {theirs['count']} (list {theirs['list']}), this "
                             f"slice with --count {count} (list {list_file}); rerun with the same count "
                             "(slurm/preprocess.sbatch: DEEPJ_SLICES=K)")
    (here / DONE).unlink(missing_ok=True)
    n = make_slice_input(input_spec, here / "input", index=index, count=count, listed=listed)
    inp = here / "input"
    if Path(input_spec).suffix.lower() in (".csv", ".json", ".jsonl"):
        inp = inp / Path(input_spec).name
    print(f"slice {index}: {n} file(s) of {input_spec} -> {here}", flush=True)
    rc = preprocess.main([str(inp), str(here / "shards"), *preprocess_args])
    if rc not in (0, 1):  # 1: nothing usable in this slice, which the merge accounts for
        return rc
    done = {"index": index, "count": count, "list": list_file, "input": str(Path(input_spec).resolve()),
            "files": n, "preprocess_exit": rc}
    if not (here / "shards" / REPORT).is_file():
        # preprocess stops before its report when a slice lists no existing file ("nothing to do"); keep what the
        # corpus reader saw (e.g. CSV rows whose files are missing), so the merged report counts every file.
        from deepj.corpus import CorpusError, open_corpus

        try:
            corpus = open_corpus(str(inp))
            done["unreported"] = {"files_seen": len(corpus.pieces) + len(corpus.skipped), "skipped": corpus.skipped}
        except CorpusError as e:
            done["unreported"] = {"files_seen": 0, "skipped": [], "error": str(e)}
    (here / DONE).write_text(json.dumps(done, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------------------ merge

def _load_slices(work: Path) -> list[dict[str, Any]]:
    dirs = sorted(p for p in Path(work).glob("slice-[0-9][0-9][0-9][0-9]") if p.is_dir())
    if not dirs:
        raise MergeError(f"{work} holds no slice-NNNN folders (run the slice step first)")
    slices = []
    for d in dirs:
        if not (d / DONE).is_file():
            raise MergeError(f"{d} has no {DONE}: its slice task did not finish (see its log), so nothing is merged")
        done = json.loads((d / DONE).read_text())
        manifest = Manifest.load(d / "shards") if (d / "shards" / MANIFEST).is_file() else None
        if manifest is None and done["preprocess_exit"] == 0:
            raise MergeError(f"{d}/shards/{MANIFEST} is missing although preprocess succeeded there")
        report_path = d / "shards" / REPORT
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        if report is None and done.get("unreported"):
            u = done["unreported"]
            counts: dict[str, int] = {}
            for x in u["skipped"]:
                counts[x["reason"]] = counts.get(x["reason"], 0) + 1
            report = {"files_seen": u["files_seen"], "skipped": u["skipped"], "counts": counts,
                      "pieces_per_split": {}}
        slices.append({"dir": d, "done": done, "manifest": manifest, "report": report})
    counts = {s["done"]["count"] for s in slices}
    if len(counts) == 1 and None not in counts:
        want = counts.pop()
        have = sorted(s["done"]["index"] for s in slices)
        if have != list(range(want)):
            missing = sorted(set(range(want)) - set(have))
            raise MergeError(f"{work}: slices {missing} of {want} are missing (no slice-NNNN folder)")
    return slices


def _check_same(slices: list[dict[str, Any]]) -> Manifest:
    made = [s for s in slices if s["manifest"] is not None]
    if not made:
        raise MergeError("no slice produced any piece (every file was skipped; see the slices' report.json)")
    first = made[0]
    for s in made[1:]:  # the format version is checked by Manifest.load: every slice's is this deepj's
        mine, theirs = s["manifest"].representation, first["manifest"].representation
        if mine != theirs:
            raise MergeError(f"{s['dir']}: representation ({mine.describe()}) differs from {first['dir']}'s "
                             f"({theirs.describe()})")
        a = {k: v for k, v in s["manifest"].settings.items() if k != "input"}
        b = {k: v for k, v in first["manifest"].settings.items() if k != "input"}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise MergeError(f"{s['dir']} was preprocessed with other settings than {first['dir']} ({', '.join(diff)})")
    inputs = {s["done"]["input"] for s in slices}
    if len(inputs) != 1:
        raise MergeError(f"the slices come from different inputs: {sorted(inputs)}")
    return first["manifest"]


def _samples(src: Path):
    """A shard's samples in order: (json meta as a dict, notes blob)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(src, "rb") as f:
        for sample in group_by_keys(tar_file_expander([{"url": str(src), "stream": f}])):
            if NOTES_KEY not in sample or META_KEY not in sample:
                raise ShardError(f"{src}: a sample without {NOTES_KEY} and {META_KEY}")
            yield json.loads(sample[META_KEY]), sample[NOTES_KEY]


def rewrite_shard(src: Path, dst_dir: Path, name: str, split: str, mapping: list[int],
                  drop: frozenset[int] = frozenset()):
    """Copy shard `src` to dst_dir/name, replacing each sample's json style_id s by mapping[s] and leaving out the
    samples at positions `drop`; everything else unchanged. -> the new shard's entry and index records (its json
    members change length, so its offsets move), or None when every sample was left out."""
    writer = ShardWriter(dst_dir, name, split)
    try:
        kept = 0
        for k, (meta, blob) in enumerate(_samples(src)):
            if k not in drop:
                writer.add(meta["source"], meta["style"], mapping[meta["style_id"]], blob, meta["steps"],
                           meta["notes"])
                kept += 1
        if kept == 0:
            writer.abort()
            return None
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def find_duplicates(made: list[dict[str, Any]]) -> tuple[dict[tuple[int, int], frozenset[int]], list[dict]]:
    """Pieces of one slice whose notes are another slice's, byte for byte (preprocess finds those within a run;
    slices are runs of their own). As preprocess does, the piece first in source order is kept.

    -> {(slice, shard): positions in the shard to leave out}, and their report entries. Candidates are pieces whose
    index records agree (crc32 and length of the notes, steps, notes) with a piece of another slice; only their
    shards are read, to compare the notes themselves and learn the sources."""
    keys, where = [], []
    for si, s in enumerate(made):
        rec = s["manifest"].pieces.all_records()
        keys.append(np.stack([rec["crc32"].astype(np.int64), rec["length"].astype(np.int64),
                              rec["steps"].astype(np.int64), rec["notes"].astype(np.int64)], axis=1))
        first = s["manifest"].shard_first_piece()
        shard = np.searchsorted(first, np.arange(len(rec)), side="right") - 1
        where.append(np.stack([np.full(len(rec), si), shard, np.arange(len(rec)) - first[shard]], axis=1))
    if not keys:
        return {}, []
    key, loc = np.concatenate(keys), np.concatenate(where)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    cand = np.flatnonzero(counts[inverse] > 1)
    groups: dict[int, list[int]] = {}
    for j in cand:  # key group -> candidate rows, kept only where they span slices
        groups.setdefault(int(inverse[j]), []).append(int(j))
    rows = sorted(j for g in groups.values() if len({int(loc[j, 0]) for j in g}) > 1 for j in g)
    wanted: dict[tuple[int, int], set[int]] = {}
    for j in rows:
        wanted.setdefault((int(loc[j, 0]), int(loc[j, 1])), set()).add(int(loc[j, 2]))
    found: dict[bytes, list[tuple[str, tuple[int, int], int]]] = {}  # notes -> (source, (slice, shard), position)
    for (si, sh), positions in sorted(wanted.items()):
        src = made[si]["dir"] / "shards" / made[si]["manifest"].shards[sh].name
        for k, (meta, blob) in enumerate(_samples(src)):
            if k in positions:
                found.setdefault(blob, []).append((meta["source"], (si, sh), k))
    drop: dict[tuple[int, int], set[int]] = {}
    skipped = []
    for copies in found.values():
        (kept, *others) = sorted(copies)
        for source, place, k in others:
            drop.setdefault(place, set()).add(k)
            skipped.append({"file": source, "reason": "duplicate", "detail": f"the same notes as {kept[0]}"})
    return {place: frozenset(ks) for place, ks in drop.items()}, skipped


def _place(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, tmp)
    tmp.replace(dst)


def merge(work: str | Path, out_dir: str | Path, *, remove_slices: bool = False) -> Manifest:
    """Merge WORK's slices into OUTPUT_DIR, as preprocess writes a folder (deepj.data.shards.OutputFolder): refused
    while another run holds it, built in a private folder inside it, put in place only when complete."""
    from deepj.preprocess import split_totals

    work, out_dir = Path(work), Path(out_dir)
    slices = _load_slices(work)
    base = _check_same(slices)
    made = [s for s in slices if s["manifest"] is not None]
    styles = sorted({st for s in made for st in s["manifest"].styles.styles})
    new_id = {st: k for k, st in enumerate(styles)}
    present = [sp for sp in SPLITS if any(sp in s["manifest"].totals for s in made)]
    drops, duplicates = ({}, []) if base.settings.get("keep_duplicates") else find_duplicates(made)
    with OutputFolder(out_dir, "merge") as folder:
        staging = folder.staging
        shards: list[ShardEntry] = []
        records: list[np.ndarray] = []
        rewritten = 0
        for split in present:
            n = 0
            for si, s in enumerate(made):
                manifest = s["manifest"]
                mapping = [new_id[st] for st in manifest.styles.styles]
                first = manifest.shard_first_piece()
                for i, entry in enumerate(manifest.shards):
                    if entry.split != split:
                        continue
                    name = f"{split}-{n:06d}.tar"
                    src = s["dir"] / "shards" / entry.name
                    rec = manifest.pieces.records(np.arange(first[i], first[i + 1])).copy()
                    drop = drops.get((si, i), frozenset())
                    if all(mapping[k] == k for k in np.unique(rec["style"])) and not drop:
                        _place(src, staging / name)
                        new = dataclasses.replace(entry, name=name)
                    else:
                        written = rewrite_shard(src, staging, name, split, mapping, drop)
                        rewritten += 1
                        if written is None:  # every piece of it is another slice's
                            continue
                        new, rec = written
                    n += 1
                    shards.append(new)
                    records.append(rec)

        totals = split_totals(shards, present)
        reports = [s["report"] for s in slices if s["report"] is not None]
        totals["files_seen"] = sum(r["files_seen"] for r in reports)
        totals["files_skipped"] = sum(len(r["skipped"]) for r in reports) + len(duplicates)
        settings = dict(base.settings, input=slices[0]["done"]["input"])
        all_records = np.concatenate(records) if records else np.zeros(0, PIECE_DTYPE)
        manifest = Manifest(dir=staging, representation=base.representation, styles=StyleTree.from_leaves(styles),
                            shards=tuple(shards), totals=totals, settings=settings, tool=f"deepj {__version__}",
                            pieces=PieceTable.from_records(all_records))
        _write_report(staging, slices, reports, all_records, styles, rewritten, duplicates, shards)
        manifest.write()
        folder.commit([e.name for e in shards] + [REPORT, INDEX], folder.stale_shards({e.name for e in shards}))
    if remove_slices:
        shutil.rmtree(work)
    return dataclasses.replace(manifest, dir=out_dir)


def _sum_dicts(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _write_report(out_dir: Path, slices, reports, records: np.ndarray, styles: list[str], rewritten: int,
                  duplicates: list[dict], shards: list[ShardEntry]) -> None:
    """report.json of the merge: the slices' reports summed with the pieces left out as another slice's duplicates;
    pieces per split and style counted from the merged shards and index."""
    first = next((r for r in reports if "source" in r), {})  # a full report (not a "nothing to do" slice's)
    per_style = {styles[sid]: int(n) for sid, n in enumerate(np.bincount(records["style"], minlength=len(styles)))
                 if n}
    report = {
        "source": first.get("source"),
        "root": slices[0]["done"]["input"],
        "files_seen": sum(r["files_seen"] for r in reports),
        "pieces_written": len(records),
        "counts": _sum_dicts([r["counts"] for r in reports] + [{"duplicate": len(duplicates)} if duplicates else {}]),
        "skipped": sorted([x for r in reports for x in r["skipped"]] + duplicates, key=lambda x: x["file"]),
        "pieces_per_split": _sum_dicts([{e.split: e.pieces} for e in shards]),
        "pieces_per_style": dict(sorted(per_style.items())),
        "unknown_composers": _sum_dicts([r.get("unknown_composers", {}) for r in reports]),
        "elapsed_s": max((r.get("elapsed_s", 0) for r in reports), default=0),  # the slices ran in parallel
        "merged": {"slices": [{"dir": str(s["dir"]), "files": s["done"]["files"],
                               "preprocess_exit": s["done"]["preprocess_exit"]} for s in slices],
                   "shards_rewritten": rewritten, "duplicates_across_slices": len(duplicates)},
    }
    for key in ("period_overrides", "splits_listed"):
        if key in first:
            report[key] = first[key]
    tmp = out_dir / (REPORT + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out_dir / REPORT)


# ------------------------------------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepj.preprocess_merge", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("slice", help="preprocess one slice of INPUT into WORK/slice-NNNN")
    s.add_argument("input", help="a MIDI folder tree or a MAESTRO-style .csv")
    s.add_argument("work", help="folder of the slices (e.g. OUTPUT_DIR.slices)")
    s.add_argument("--index", type=int, required=True, help="this slice (0-based; SLURM_ARRAY_TASK_ID)")
    s.add_argument("--count", type=int, help="number of slices: this one takes files index, index+count, ...")
    s.add_argument("--list", dest="list_file", help="instead of --count: a file of source names, one per line")
    m = sub.add_parser("merge", help="merge WORK's slices into OUTPUT_DIR")
    m.add_argument("work")
    m.add_argument("output_dir")
    m.add_argument("--remove-slices", action="store_true", help="delete WORK after a successful merge")
    u = sub.add_parser("upgrade", help="give a shard folder of manifest format 1 its piece index, in place")
    u.add_argument("shard_dir")
    args, rest = ap.parse_known_args(argv)
    try:
        if args.cmd == "upgrade":
            from deepj.data.upgrade import upgrade

            manifest = upgrade(args.shard_dir)
            print(f"upgraded {args.shard_dir}: {len(manifest.pieces)} pieces indexed, corpus hash {manifest.hash} "
                  "(unchanged)")
            return 0
        if args.cmd == "slice":
            return run_slice(args.input, Path(args.work), index=args.index, count=args.count,
                             list_file=args.list_file, preprocess_args=[a for a in rest if a != "--"])
        if rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        manifest = merge(args.work, args.output_dir, remove_slices=args.remove_slices)
    except (MergeError, ShardError, OutputError, OSError) as e:
        print(f"preprocess_merge: error: {e}", file=sys.stderr)
        return 2
    t = manifest.totals
    print(f"merged into {args.output_dir}: {manifest.styles.num_styles} styles, "
          + ", ".join(f"{sp} {t[sp]['pieces']} pieces / {t[sp]['shards']} shards" for sp in SPLITS if sp in t)
          + f"; {t['files_skipped']} of {t['files_seen']} files skipped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
