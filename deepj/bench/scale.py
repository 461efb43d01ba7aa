"""`python -m deepj.bench scale`: the data path at corpus scale (100 GB of dense rolls), on this machine, in one run.

    python -m deepj.bench scale [--factor K] [--source DIR | --midi DIR] [--work DIR] [--keep] [--windows N]
        [--loader-only SHARDS] [--skip STAGES] [--train-steps N] ...  (--help lists all)

1. corpus: K copies of a MIDI tree (--source, default the demo corpus) in its `<period>/<composer>/` folders, named
   `<stem>--c0007.mid` (hard links, else symlinks). Default K: the fewest whose dense float32 [play, replay, volume]
   rolls (sum over pieces of steps x notes x 3 x 4 bytes) reach --dense-gb, from the source preprocessed once (a copy
   is the same bytes, so the same pieces). `--midi DIR`: a ready tree as the corpus instead.
2. preprocess: `python -m deepj.preprocess --workers 1` and `2` as subprocesses: wall time, files/s, peak RSS of the
   process tree (sampled every 0.1 s: the largest VmHWM of one process; the largest sum of VmRSS at one sample, which
   counts pages shared by forked processes in each); whether the outputs are byte-identical (shards, pieces.npy,
   manifest.json; report.json holds the run's duration); shard bytes vs dense rolls. pretty_midi parsing alone
   (`pretty_midi.PrettyMIDI(path)`, this process) on the corpus in a random order (--seed) for --pm-seconds,
   extrapolated to every file, against the 2-worker wall time.
3. loader: `StreamingLoader` over the train split of the 2-worker output (1x) and of --replicas hard-linked copies of
   its train shards (10x: the page cache holds one copy, which flatters reading, not memory), with each count of
   --workers-list DataLoader workers (forked, as in a training rank), each run in a fresh spawned process: windows/s
   over --windows windows (first batch excluded, epoch restarts included), time to the first batch (from creating the
   loader, Manifest.load included), shard bytes read per window (`loader.bytes_read` / windows), peak RSS above
   baseline. Main process: VmHWM (reset at the baseline where the kernel allows) minus its RSS after importing torch
   and deepj. Worker: VmHWM minus its own RSS when it starts (reported by the loader's worker init hook, wrapped
   here: torch imported, no batch yet). Its private memory (Private_* of smaps_rollup, sampled) is given too, as an
   upper bound: it also counts the parent's pages that the parent rewrote after the fork, which only the worker
   still maps. And the catalogue's bytes per piece (manifest columns + the epoch's piece permutation).
4. shuffle: for the first --shuffle-batches global batches (64 and 256 windows) of epoch 0 of the source, 1x and 10x
   shards, the mean distinct pieces and leaf styles per batch, from the loader's order (no data read), against a
   uniform draw of windows (with replacement, pieces weighted by their windows) from the same catalogue.
5. train: `torchrun --nproc_per_node=2 -m deepj.train --config configs/debug.toml` on the 1x shards for
   --train-steps steps (data.workers=--train-workers; no checkpoint, sample or validation before the end): wall
   time, peak RSS (VmHWM, sampled) of each rank and of its DataLoader workers.

`--skip` leaves stages out (serial: the 1-worker preprocess and the identity check); `--loader-only SHARDS` runs
stage 3 alone. The table ends with each target and whether it was met; the last line is one JSON object of it all.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import deepj
from deepj.bench._loader_probe import SEQ_LEN, STRIDE, LoaderSpec, measure_loader
from deepj.bench.data import _load, _vm_kb, machine_info, measure_sizes, replicate_shards
from deepj.config import finite_float
from deepj.corpus.folder import iter_midi_paths

REPO = Path(deepj.__file__).resolve().parents[1]
STAGES = ("serial", "pretty_midi", "loader", "tenx", "shuffle", "train")
GLOBAL_BATCHES = (64, 256)
MB = 2**20
TRAIN_CONFIG = REPO / "configs" / "debug.toml"


# --------------------------------------------------------------------------------------------------- processes

def run_sampled(cmd: list[str], log: Path) -> tuple[float, dict[int, dict[str, Any]], int]:
    """Run cmd from the repository (output to `log`), sampling its process tree every 0.1 s: each process's VmHWM (the
    kernel keeps the peak, so a sample need only come before the process exits), parent and LOCAL_RANK (torchrun's
    ranks), and the largest sum of their VmRSS at one sample. -> (wall s, {pid: process}, tree peak kB)."""
    import psutil

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # this checkout first
    procs: dict[int, dict[str, Any]] = {}
    tree_kb = 0
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
        while proc.poll() is None:
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:  # exited since poll()
                continue
            total = 0
            for p in tree:
                hwm, rss = _vm_kb("VmHWM", p.pid), _vm_kb("VmRSS", p.pid)
                if p.pid not in procs:
                    try:
                        procs[p.pid] = {"ppid": p.ppid(), "local_rank": p.environ().get("LOCAL_RANK"), "hwm_kb": 0}
                    except psutil.Error:  # gone between listing and reading
                        continue
                procs[p.pid]["hwm_kb"] = max(procs[p.pid]["hwm_kb"], hwm)
                total += rss
            tree_kb = max(tree_kb, total)
            time.sleep(0.1)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return wall, procs, tree_kb


# --------------------------------------------------------------------------------------------------- stages 1, 2

def build_corpus(source: Path, dst: Path, copies: int) -> dict[str, Any]:
    """`copies` links to every MIDI file of `source`, in the same relative folders, named `<stem>--cNNNN<suffix>`."""
    files = [p for p, _ in iter_midi_paths(source) if p.is_file()]
    if not files:
        raise SystemExit(f"scale: no MIDI files under {source}")
    width, kind = max(4, len(str(copies - 1))), "hard link"
    for path in files:
        folder = dst / path.parent.relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            target = folder / f"{path.stem}--c{c:0{width}d}{path.suffix}"
            if kind == "hard link":
                try:
                    os.link(path, target)
                    continue
                except OSError:  # another file system, or links refused: symlinks for the rest
                    kind = "symlink"
            target.symlink_to(path.resolve())
    midi_bytes = sum(p.stat().st_size for p in files)
    return {"source": str(source), "source_files": len(files), "factor": copies, "files": len(files) * copies,
            "midi_bytes": midi_bytes * copies, "link": kind, "dir": str(dst)}


def run_preprocess(midi: Path, out: Path, workers: int, extra: list[str], logs: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "deepj.preprocess", str(midi), str(out), "--workers", str(workers), *extra]
    wall, procs, tree_kb = run_sampled(cmd, logs / f"preprocess-w{workers}.log")
    files = json.loads((out / "manifest.json").read_text())["totals"]["files_seen"]
    return {"wall_s": wall, "files": files, "files_per_s": files / wall, "processes": len(procs),
            "peak_rss_mb": max(p["hwm_kb"] for p in procs.values()) / 1024, "tree_peak_rss_mb": tree_kb / 1024}


def compare_outputs(a: Path, b: Path) -> dict[str, Any]:
    """Every shard, pieces.npy and manifest.json of two shard folders, byte for byte."""
    def names(d: Path) -> set[str]:
        return {p.name for p in d.iterdir() if p.suffix == ".tar" or p.name in ("pieces.npy", "manifest.json")}

    both, differing = names(a) & names(b), sorted(names(a) ^ names(b))
    differing += sorted(n for n in both if not filecmp.cmp(a / n, b / n, shallow=False))
    return {"identical": not differing, "files_compared": len(both), "differing": differing[:20]}


def time_pretty_midi(files: list[Path], seconds: float, seed: int) -> dict[str, Any]:
    """pretty_midi parsing alone, one process, on the files in a random order until `seconds` are up."""
    import pretty_midi

    done, errors, t0 = 0, 0, time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretty_midi warns about tempo events on non-zero tracks
        for i in np.random.default_rng(seed).permutation(len(files)):
            try:
                pretty_midi.PrettyMIDI(str(files[i]))
            except Exception:  # noqa: BLE001 - mido/pretty_midi raise many types; a refusal costs its time too
                errors += 1
            done += 1
            if time.perf_counter() - t0 >= seconds:
                break
    elapsed = time.perf_counter() - t0
    rate = done / elapsed
    return {"sample": f"the first files of a random permutation (seed {seed}) of all {len(files)}, parsed until "
                      f"{seconds:g} s were up", "files_parsed": done, "seconds": elapsed, "errors": errors,
            "files_per_s": rate, "all_files_s": len(files) / rate}


def corpus_stages(args, work: Path, skip: set[str], res: dict[str, Any], plan_dirs: dict[str, Path], say) -> Path:
    """Stages 1 and 2 (figures into `res`, the source's shards into `plan_dirs`) -> the 2-worker shard folder."""
    # The copies are the same notes under new names, which preprocess would write once: kept, as a corpus that
    # size would hold different pieces.
    extra = ["--keep-duplicates"] + ([] if args.shard_size_mb is None else ["--shard-size-mb", str(args.shard_size_mb)])
    midi = args.midi
    if midi is None:
        from deepj.preprocess import Settings, preprocess

        if args.source is None:
            from deepj.corpus.demo import build_demo_corpus

            args.source = build_demo_corpus(progress=False)
        say(f"preprocessing the source {args.source} once (per-copy figures) ...")
        plan_dirs["source"] = work / "shards-source"
        settings = Settings() if args.shard_size_mb is None else Settings(shard_size_mb=args.shard_size_mb)
        preprocess(str(args.source), plan_dirs["source"], settings, workers=2, progress=False)
        per_copy = measure_sizes(plan_dirs["source"])
        factor = args.factor or math.ceil(args.dense_gb * 1e9 / per_copy["dense_bytes"])
        say(f"building {factor} copies of {args.source} ...")
        midi = work / "midi"
        res["corpus"] = build_corpus(args.source, midi, factor)
        res["corpus"]["per_copy"] = {k: per_copy[k] for k in ("pieces", "steps", "dense_bytes")}
    files = [p for p, _ in iter_midi_paths(midi) if p.is_file()]
    if args.midi is not None:  # a ready tree: described, not built
        res["corpus"] = {"source": str(midi), "source_files": len(files), "factor": 1, "files": len(files),
                         "midi_bytes": sum(p.stat().st_size for p in files), "link": "given", "dir": str(midi)}
    pre: dict[str, Any] = {"runs": {}}
    res["preprocess"] = pre
    for w in (1, 2) if "serial" not in skip else (2,):
        say(f"preprocess --workers {w}: {len(files):,} files ...")
        pre["runs"][str(w)] = run_preprocess(midi, work / f"shards-w{w}", w, extra, work / "logs")
    if "serial" not in skip:
        pre.update(compare_outputs(work / "shards-w1", work / "shards-w2"))
    pre["sizes"] = measure_sizes(work / "shards-w2")
    if "pretty_midi" not in skip:
        say(f"pretty_midi, {args.pm_seconds:g} s ...")
        res["pretty_midi"] = time_pretty_midi(files, args.pm_seconds, args.seed)
        pre["speedup_vs_pretty_midi"] = res["pretty_midi"]["all_files_s"] / pre["runs"]["2"]["wall_s"]
    return work / "shards-w2"


# --------------------------------------------------------------------------------------------------- stage 4

def _distinct(rows: np.ndarray) -> np.ndarray:
    """(n, g) -> (n,) distinct values per row."""
    s = np.sort(rows, axis=1)
    return (np.diff(s, axis=1) != 0).sum(axis=1) + 1


def plan_figures(shard_dir: Path, args, shuffle: bool) -> dict[str, Any]:
    """The catalogue's bytes per piece, and (with `shuffle`) the order's mix of pieces and styles per global batch
    against a uniform draw; from the manifest alone, no shard read."""
    from deepj.data.manifest import Manifest
    from deepj.data.windows import Catalogue, Order

    manifest = Manifest.load(shard_dir)
    cat = Catalogue(manifest, "train", SEQ_LEN, STRIDE)
    order = Order(cat, args.seed, 0, shuffle=True, pool_bytes=args.shuffle_mb * MB)
    table = manifest.pieces
    columns = table.steps.nbytes + table.notes.nbytes + table.styles.nbytes
    out: dict[str, Any] = {
        "pieces": len(table), "train_pieces": cat.count, "windows_per_epoch": cat.total,
        "pools": len(order.pool_first) - 1, "pieces_per_pool": order.per_pool,
        "catalogue_bytes_per_piece": columns / len(table) + order.perm.nbytes / cat.count}
    if not shuffle:
        return out
    weights = cat.windows(np.arange(cat.count)).astype(np.float64)
    rng = np.random.default_rng(args.seed)
    for g in GLOBAL_BATCHES:
        n = min(args.shuffle_batches, cat.total // g)
        if n == 0:  # fewer windows than one global batch
            out[f"batch_{g}"] = None
            continue
        piece = order.lookup(np.arange(n * g))[0].reshape(n, g)
        draw = rng.choice(cat.count, size=(n, g), p=weights / weights.sum())
        out[f"batch_{g}"] = {
            "batches": int(n), "distinct_pieces": float(_distinct(piece).mean()),
            "distinct_styles": float(_distinct(cat.piece_style[piece]).mean()),
            "uniform_distinct_pieces": float(_distinct(draw).mean()),
            "uniform_distinct_styles": float(_distinct(cat.piece_style[draw]).mean())}
    return out


# --------------------------------------------------------------------------------------------------- stage 5

def run_train(shards: Path, work: Path, args) -> dict[str, Any]:
    run_dir, log = work / "train-run", work / "logs" / "train.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "deepj.train",
           "--config", str(TRAIN_CONFIG), f"data.dir={shards}", f"run.dir={run_dir}",
           f"train.max_steps={args.train_steps}", f"data.workers={args.train_workers}", "checkpoint.every=0",
           "train.val_every=0", "log.sample_every=0", f"log.every={max(1, args.train_steps // 10)}",
           *args.train_override]
    wall, procs, tree_kb = run_sampled(cmd, log)
    # A rank is a process with LOCAL_RANK whose parent (torchrun's agent) has none; its children are its
    # DataLoader workers (which inherit LOCAL_RANK with the rest of its environment).
    ranks = {pid: p for pid, p in procs.items()
             if p["local_rank"] is not None and procs.get(p["ppid"], {}).get("local_rank") is None}
    per_rank = {}
    for pid, p in sorted(ranks.items(), key=lambda kv: int(kv[1]["local_rank"])):
        workers = [q["hwm_kb"] / 1024 for q in procs.values() if q["ppid"] == pid]
        per_rank[p["local_rank"]] = {"peak_rss_mb": p["hwm_kb"] / 1024, "worker_peak_rss_mb": max(workers, default=0),
                                     "workers_seen": len(workers)}
    return {"steps": args.train_steps, "wall_s": wall, "steps_per_s": args.train_steps / wall, "ranks": per_rank,
            "tree_peak_rss_mb": tree_kb / 1024, "workers": args.train_workers, "config": str(TRAIN_CONFIG),
            "overrides": args.train_override}


# --------------------------------------------------------------------------------------------------- report

def targets(res: dict[str, Any], cache_mb: int) -> list[dict[str, Any]]:
    """Each target measured, with its value (the worst run's where it covers several) and whether it was met."""
    out = []

    def add(name: str, value, ok, target: str) -> None:
        out.append({"name": name, "value": value, "target": target, "ok": bool(ok)})

    pre = res.get("preprocess", {})
    if "identical" in pre:
        add("preprocess outputs identical, 1 vs 2 workers", pre["identical"], pre["identical"], "true")
    if "speedup_vs_pretty_midi" in pre:
        v = pre["speedup_vs_pretty_midi"]
        add("preprocess (2 workers) vs pretty_midi parsing alone", v, v >= 30, ">= 30x")
    if "sizes" in pre:
        v = pre["sizes"]["compression_ratio"]
        add("dense rolls / shard bytes", v, v >= 150, ">= 150x")
    runs = [r for scale in res.get("loader", {}).values() for r in scale["runs"].values()]
    if runs:
        v = max(r["peak_above_baseline_mb"] for r in runs)
        add("loader peak RSS above baseline, any process and scale", v, v <= cache_mb + 64, f"<= {cache_mb + 64} MB")
        v = max(r["first_batch_s"] for r in runs)
        add("loader time to first batch (worst)", v, v <= 2, "<= 2 s")
    for w, want in ((0, 15000), (1, 5000)):
        rates = [r["windows_per_s"] for r in runs if r["workers"] == w]
        if rates:
            add(f"loader windows/s, {w} workers (worst scale)", min(rates), min(rates) >= want, f">= {want:,}")
    return out


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    c, pre, pm, t = res.get("corpus"), res.get("preprocess", {}), res.get("pretty_midi"), res.get("train")
    if c:
        rows.append(("corpus", f"{c['files']:,} files ({c['factor']} x {c['source_files']}, {c['link']}s), "
                     f"{c['midi_bytes'] / 1e6:,.0f} MB of MIDI"))
    if "sizes" in pre:
        s = pre["sizes"]
        rows += [("  pieces, steps, dense rolls", f"{s['pieces']:,} pieces, {s['steps']:,} steps, "
                  f"{s['dense_bytes'] / 1e9:,.2f} GB dense"),
                 ("  shard bytes (all splits)", f"{s['shard_bytes'] / 1e6:,.1f} MB, {s['compression_ratio']:,.0f}x "
                  "smaller than dense")]
    for w, r in pre.get("runs", {}).items():
        rows.append((f"preprocess --workers {w}", f"{r['wall_s']:,.1f} s, {r['files_per_s']:,.0f} files/s, peak RSS "
                     f"{r['peak_rss_mb']:,.0f} MB (one process), {r['tree_peak_rss_mb']:,.0f} MB (tree)"))
    if "identical" in pre:
        rows.append(("  outputs identical, 1 vs 2 workers", f"{pre['identical']} ({pre['files_compared']} files)"))
    if pm:
        rows.append(("pretty_midi parse alone, 1 process", f"{pm['files_parsed']:,} files in {pm['seconds']:.1f} s, "
                     f"{pm['files_per_s']:,.1f} files/s -> {pm['all_files_s']:,.0f} s for all files; preprocess "
                     f"--workers 2 is {pre.get('speedup_vs_pretty_midi', math.nan):,.1f}x faster"))
    for scale, d in res.get("loader", {}).items():
        rows.append((f"loader {scale} ({d['plan']['train_pieces']:,} train pieces)",
                     f"catalogue {d['plan']['catalogue_bytes_per_piece']:.1f} bytes/piece"))
        for w, r in d["runs"].items():
            worker = (f", worker {max(r['workers_above_baseline_mb']):,.0f} MB ({max(r['workers_private_mb']):,.0f} "
                      "MB private)") if r["workers_above_baseline_mb"] else ""
            rows.append((f"  {w} workers", f"{r['windows_per_s']:,.0f} windows/s, first batch {r['first_batch_s']:.2f}"
                         f" s, {r['bytes_per_window']:,.0f} B read/window; above baseline: main "
                         f"{r['main_above_baseline_mb']:,.0f} MB{worker}"))
    for scale, d in res.get("shuffle", {}).items():
        for g in GLOBAL_BATCHES:
            q = d.get(f"batch_{g}")
            if q:
                rows.append((f"shuffle {scale}, global batch {g}", f"{q['distinct_pieces']:.1f} pieces, "
                             f"{q['distinct_styles']:.2f} styles (uniform: {q['uniform_distinct_pieces']:.1f}, "
                             f"{q['uniform_distinct_styles']:.2f}; {q['batches']} batches)"))
    if t:
        rows.append(("train, 2 ranks, configs/debug.toml", f"{t['steps']} steps in {t['wall_s']:.0f} s"))
        rows += [(f"  rank {k} peak RSS", f"{r['peak_rss_mb']:,.0f} MB, its workers {r['worker_peak_rss_mb']:,.0f} MB")
                 for k, r in t["ranks"].items()]
    rows.append(("bench wall time", f"{res['wall_s']:,.0f} s"))
    for t in res["targets"]:
        value = t["value"] if isinstance(t["value"], bool) else f"{t['value']:,.2f}"
        rows.append((f"target: {t['name']}", f"{value} ({t['target']}): {'met' if t['ok'] else 'MISSED'}"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


# --------------------------------------------------------------------------------------------------- main

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m deepj.bench scale", description=__doc__.split("\n\n")[0])
    add, positive, d = ap.add_argument, finite_float(0, lo_open=True), " (default: %(default)s)"
    add("--factor", type=int, help="copies of the source (default: the fewest whose rolls reach --dense-gb)")
    add("--dense-gb", type=positive, default=100.0, help="dense float32 rolls (1e9 bytes) the default --factor "
        "reaches" + d)
    add("--source", type=Path, help="MIDI tree to copy (default: the demo corpus)")
    add("--midi", type=Path, help="a ready MIDI tree to use as the corpus as it is")
    add("--work", type=Path, help="make the work folder in this folder (default: the system's temp folder)")
    add("--keep", action="store_true", help="keep the work folder (corpus, shards, logs)")
    add("--loader-only", type=Path, metavar="SHARDS", help="only the loader, on this shard folder and its copies")
    add("--skip", default="", help=f"comma-separated stages to leave out: {', '.join(STAGES)} (serial: the 1-worker "
        "preprocess and the identity check; tenx: the --replicas copies)")
    add("--shard-size-mb", type=positive, help="preprocess --shard-size-mb (default: preprocess's)")
    add("--pm-seconds", type=positive, default=30.0, help="time spent parsing with pretty_midi" + d)
    add("--windows", type=int, default=500_000, help="windows each loader run streams" + d)
    add("--batch", type=int, default=64, help="loader micro-batch (windows per batch)" + d)
    add("--workers-list", default="0,1,2", help="DataLoader worker counts of the loader runs" + d)
    add("--replicas", type=int, default=10, help="copies of the train shards for the 10x figures" + d)
    add("--cache-mb", type=int, default=256, help="data.cache_mb of the loader runs" + d)
    add("--shuffle-mb", type=int, default=128, help="data.shuffle_mb of the loader runs and shuffle figures" + d)
    add("--mmap-threshold", type=int, default=0, help="glibc M_MMAP_THRESHOLD (bytes) of the loader processes; 0: "
        "glibc's default, which rises to the largest block freed, so that batch buffers then come from the heap" + d)
    add("--shuffle-batches", type=int, default=1000, help="global batches measured per shuffle figure" + d)
    add("--train-steps", type=int, default=2200, help="steps of the 2-rank run (0: none; the default lasts over 2 "
        "minutes on 2 cores)" + d)
    add("--train-workers", type=int, default=1, help="data.workers of the 2-rank run" + d)
    add("--train-override", action="append", default=[], metavar="KEY=VALUE", help="more overrides for it")
    add("--seed", type=int, default=0, help="seed of the pretty_midi sample and the shuffle figures" + d)
    return ap


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    ap = _parser()
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(STAGES):
        ap.error(f"--skip: unknown stage(s) {', '.join(sorted(skip - set(STAGES)))}; stages: {', '.join(STAGES)}")
    workers_list = [int(w) for w in args.workers_list.split(",") if w.strip().isdigit()]
    if len(workers_list) != len(args.workers_list.split(",")):
        ap.error(f"--workers-list: comma-separated integers >= 0, got {args.workers_list!r}")
    if min(args.windows, args.batch, args.cache_mb, args.shuffle_mb, args.shuffle_batches, args.factor or 1,
           args.replicas - 1, args.train_steps + 1, args.train_workers + 1, args.seed + 1, args.mmap_threshold + 1) < 1:
        ap.error("--windows, --batch, --cache-mb, --shuffle-mb, --shuffle-batches, --factor must be >= 1, "
                 "--replicas >= 2, --train-steps, --train-workers, --seed, --mmap-threshold >= 0")
    if args.midi is not None and (args.source is not None or args.factor is not None):
        ap.error("--midi is the corpus as it is: no --source or --factor with it")
    if args.loader_only is not None:
        if not (args.loader_only / "manifest.json").is_file():
            ap.error(f"--loader-only {args.loader_only}: no manifest.json there")
        skip |= {"serial", "pretty_midi", "shuffle", "train"}
    if args.train_steps == 0:
        skip.add("train")

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="deepj-bench-scale-", dir=args.work))
    (work / "logs").mkdir()
    res: dict[str, Any] = {"command": "python -m deepj.bench scale " + " ".join(sys.argv[1:] if argv is None
                                                                               else argv),
                           "skipped_stages": sorted(skip), "load_start": _load(),
                           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    plan_dirs: dict[str, Path] = {}  # scale -> shard folder, for the loader, catalogue and shuffle figures
    try:
        plan_dirs["1x"] = args.loader_only or corpus_stages(args, work, skip, res, plan_dirs, say)
        big = f"{args.replicas}x"
        if "tenx" not in skip and not {"loader", "shuffle"} <= skip:
            plan_dirs[big] = replicate_shards(plan_dirs["1x"], work / f"shards-{big}", args.replicas, link=True)
        if "loader" not in skip:
            res["loader"] = {}
            for scale in [s for s in ("1x", big) if s in plan_dirs]:
                runs = {}
                for w in workers_list:
                    say(f"loader {scale}, {w} workers, {args.windows:,} windows ...")
                    runs[str(w)] = measure_loader(LoaderSpec(str(plan_dirs[scale]), w, args.batch, args.windows,
                                                             args.cache_mb, args.shuffle_mb, args.mmap_threshold))
                res["loader"][scale] = {"dir": str(plan_dirs[scale]), "runs": runs,
                                        "plan": plan_figures(plan_dirs[scale], args, shuffle=False)}
            if big in plan_dirs:
                res["loader"][big]["note"] = (f"{args.replicas} hard-linked copies of the 1x train shards: the "
                                              "page cache holds one copy, which flatters reading, not memory")
        if "shuffle" not in skip:
            say("shuffle figures ...")
            res["shuffle"] = {scale: plan_figures(d, args, shuffle=True) for scale, d in plan_dirs.items()}
        if "train" not in skip:
            say(f"2-rank training, {args.train_steps} steps ...")
            res["train"] = run_train(plan_dirs["1x"], work, args)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    res.update(machine=machine_info(), load_end=_load(), wall_s=time.perf_counter() - t_start)
    res["targets"] = targets(res, args.cache_mb)
    print(table(res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
