"""`python -m deepj.bench data`: how fast MIDI becomes shards, how small the shards are, how fast they become windows.

    python -m deepj.bench data [--midi DIR] [--shards DIR] [--seconds S] [--repeats R] [--batch B]
        [--workers-list 0,1,2] [--shard-size-mb M] [--keep DIR]

Figures, measured in one run on the same files:
- per-file reading, one process each: our pipeline (`deepj.preprocess.process_file`: symusic parse, quantize, merge,
  checks) against pretty_midi parsing alone (`pretty_midi.PrettyMIDI(path)`), in files/s and MIDI MB/s. Both time
  the same files: pretty_midi goes through the files in order until S seconds are up, the pipeline then loops over
  exactly those files for S seconds. Files pretty_midi refuses (it rejects ticks above 1e7) are left out of both.
  Repeated R times alternately; the best rate of each is reported (the run least disturbed by other load).
- the whole `deepj.preprocess.preprocess` run (read, split, write shards) with 1 and 2 worker processes, wall time;
- shard bytes (tar files, all splits) against the dense float32 `[play, replay, volume]` rolls of the same pieces
  (sum over pieces of T x N x 3 x 4 bytes);
- `deepj.data.loader.StreamingLoader` windows/s (windows of 128 steps x N notes, stride 16, transposition on) with 0
  (in-process), 1 and 2 DataLoader workers, each run in a fresh process so that its RSS high-water mark is its own;
- RSS flat in corpus size: the in-process loader's peak RSS over the train shards (1x) and over 10 copies of them
  (10x, the same shard files under new names with a manifest listing the copies), reading the same number of windows.

Input: the demo corpus (built into its cache if missing) unless `--midi DIR`; `--shards DIR` measures that shard
folder's loader and sizes and skips the reading part unless --midi is also given. The last line printed is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from deepj.config import finite_float
from deepj.music.constants import NUM_CHANNELS

ROLL_ITEM_BYTES = 4  # float32
REPLICAS = 10  # the "10x" corpus for the RSS figure


# --------------------------------------------------------------------------------------------------- machine

def _vm_kb(field: str, pid: int | str = "self") -> int:
    """A field of /proc/<pid>/status in kB (VmHWM = RSS high-water mark of the process), 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_info() -> dict[str, Any]:
    import numpy
    import torch

    from deepj.bench._machine import cpu_name

    cpu = cpu_name()
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("symusic", "pretty_midi", "webdataset"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": _mem_total_gb(), "platform": platform.platform(),
            **versions}


def _mem_total_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return 0.0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------------- reading

def _timed_loop(files: list[Path], seconds: float, fn) -> tuple[int, float, int, float]:
    """Call fn(path) over the files, pass after pass, until `seconds` are up (at least one file; stops mid-pass).
    -> (files done, elapsed s, bytes read, CPU s of this process)."""
    sizes = [p.stat().st_size for p in files]
    done, nbytes, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    while True:
        for p, size in zip(files, sizes):
            fn(p)
            done, nbytes = done + 1, nbytes + size
            if time.perf_counter() - t0 >= seconds:
                return done, time.perf_counter() - t0, nbytes, time.process_time() - c0


def measure_reading(files: list[Path], seconds: float, repeats: int, min_steps: int) -> dict[str, Any]:
    """Per-process files/s and MB/s: process_file (symusic) vs pretty_midi parsing alone, on the same files."""
    import pretty_midi

    from deepj.music.midi_io import MidiError
    from deepj.music.representation import ReprConfig
    from deepj.preprocess import process_file

    cfg = ReprConfig()

    def pipeline(p: Path) -> None:
        try:
            process_file(p, cfg, min_steps)
        except MidiError:  # a skipped file (too short, ...) costs its reading time like any other
            pass

    def pretty(p: Path) -> None:
        pretty_midi.PrettyMIDI(str(p))

    # Warm-up pass: imports, page cache, and the files pretty_midi refuses (left out of both timings).
    common, refused = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretty_midi warns about tempo events on non-zero tracks
        for p in files:
            pipeline(p)
            try:
                pretty(p)
                common.append(p)
            except Exception as e:  # noqa: BLE001 - mido/pretty_midi raise many types for files they refuse
                refused.append({"file": str(p), "error": f"{type(e).__name__}: {e}"[:200]})
        if not common:
            raise RuntimeError(f"pretty_midi could read none of the {len(files)} MIDI files; nothing to compare")
        runs = []
        for _ in range(repeats):
            n_pm, t_pm, b_pm, c_pm = _timed_loop(common, seconds, pretty)
            same = common[: min(n_pm, len(common))]  # the files pretty_midi got through
            n_pl, t_pl, b_pl, c_pl = _timed_loop(same, seconds, pipeline)
            runs.append({"pretty_midi_files_per_s": n_pm / t_pm, "pipeline_files_per_s": n_pl / t_pl,
                         "pretty_midi_mb_per_s": b_pm / t_pm / 1e6, "pipeline_mb_per_s": b_pl / t_pl / 1e6,
                         # CPU time is what other load on the machine disturbs least
                         "speedup_cpu": (n_pl / max(c_pl, 1e-9)) / (n_pm / max(c_pm, 1e-9)),
                         "files": len(same), "load": _load()})
    best_pl = max(runs, key=lambda r: r["pipeline_files_per_s"])
    best_pm = max(runs, key=lambda r: r["pretty_midi_files_per_s"])
    ratios = sorted(r["pipeline_files_per_s"] / r["pretty_midi_files_per_s"] for r in runs)
    return {
        "files_per_s_pipeline": best_pl["pipeline_files_per_s"],
        "files_per_s_pretty_midi": best_pm["pretty_midi_files_per_s"],
        "speedup_vs_pretty_midi": best_pl["pipeline_files_per_s"] / best_pm["pretty_midi_files_per_s"],
        "speedup_median_of_runs": ratios[len(ratios) // 2],
        "speedup_cpu_median_of_runs": sorted(r["speedup_cpu"] for r in runs)[len(runs) // 2],
        "mb_per_s": best_pl["pipeline_mb_per_s"],
        "mb_per_s_pretty_midi": best_pm["pretty_midi_mb_per_s"],
        "reading_files": len(common),
        "reading_bytes": sum(p.stat().st_size for p in common),
        "pretty_midi_refused": refused,
        "reading_runs": runs,
    }


def measure_preprocess(midi_dir: Path, out_root: Path, shard_size_mb: float, min_steps: int, repeats: int,
                       worker_counts=(1, 2)) -> tuple[dict[str, Any], Path]:
    """Wall time of the whole preprocess run per worker count (best of `repeats`); -> figures, the shard folder."""
    from deepj.preprocess import Settings, preprocess

    settings = Settings(shard_size_mb=shard_size_mb, min_steps=min_steps)
    wall: dict[str, float] = {}
    manifest = None
    for workers in worker_counts:
        out = out_root / f"shards-w{workers}"
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            manifest = preprocess(str(midi_dir), out, settings, workers=workers, force=True, progress=False)
            best = min(best, time.perf_counter() - t0)
        wall[str(workers)] = best
    files = manifest.totals["files_seen"]
    par = str(max(worker_counts))
    return {"preprocess_wall_s": wall, "preprocess_files": files,
            "preprocess_files_skipped": manifest.totals["files_skipped"],
            "preprocess_files_per_s": {k: files / v for k, v in wall.items()},
            "parallel_wall_s": wall[par], "parallel_workers": int(par)}, out_root / f"shards-w{par}"


# --------------------------------------------------------------------------------------------------- sizes

def measure_sizes(shard_dir: Path) -> dict[str, Any]:
    """Bytes of the shard files (all splits) vs dense float32 rolls of the same pieces."""
    from deepj.data.manifest import Manifest

    manifest = Manifest.load(shard_dir)
    n = manifest.representation.num_notes
    shard_bytes = sum((shard_dir / s.name).stat().st_size for s in manifest.shards)
    steps = int(manifest.pieces.steps.sum(dtype="int64"))
    dense = steps * n * NUM_CHANNELS * ROLL_ITEM_BYTES  # (T, N, 3) float32 per piece, summed
    return {"shard_bytes": shard_bytes, "dense_bytes": dense, "compression_ratio": dense / shard_bytes,
            "pieces": sum(s.pieces for s in manifest.shards), "steps": steps,
            "notes": sum(s.notes for s in manifest.shards), "shards": len(manifest.shards)}


def replicate_shards(src: Path, dst: Path, times: int, split: str = "train", link: bool = False) -> Path:
    """A shard folder holding `times` copies of src's `split` shards under new names, with a manifest (and piece
    index) listing them. `link`: hard links instead of copies (same bytes, no disk; the page cache then holds one
    copy, which flatters reading speed but not memory)."""
    import numpy as np

    from deepj.data.manifest import Manifest, PieceTable

    manifest = Manifest.load(src)
    dst.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in manifest.split(split) * times:
        name = f"{split}-{len(entries):06d}.tar"
        (dst / name).unlink(missing_ok=True)
        if link:
            os.link(src / entry.name, dst / name)
        else:
            shutil.copyfile(src / entry.name, dst / name)  # same bytes, so the same sha256
        entries.append(dataclasses.replace(entry, name=name))
    lo, hi = manifest.split_range(split)
    records = np.tile(manifest.pieces.records(np.arange(lo, hi)), times)
    totals = {split: {"pieces": sum(e.pieces for e in entries), "steps": sum(e.steps for e in entries),
                      "notes": sum(e.notes for e in entries), "bytes": sum(e.bytes for e in entries),
                      "shards": len(entries)}}
    dataclasses.replace(manifest, dir=dst, shards=tuple(entries), totals=totals,
                        pieces=PieceTable.from_records(records)).write()
    return dst


# --------------------------------------------------------------------------------------------------- loader

@dataclasses.dataclass
class LoaderRun:
    shard_dir: str
    workers: int
    batch: int
    seconds: float  # per timed segment
    segments: int = 1  # timed segments, back to back; the best and the median rate are reported
    max_windows: int = 0  # per segment; 0 = only `seconds` bounds it
    seq_len: int = 128
    stride: int = 16


def _child_pids() -> list[int]:
    """Process ids of this process's children (the DataLoader workers)."""
    try:
        import psutil

        return [c.pid for c in psutil.Process().children()]
    except Exception:  # noqa: BLE001 - psutil missing or a child gone: the sample just misses it
        return []


def _children_cpu_s() -> float:
    """CPU seconds of this process's children: reaped ones (getrusage) plus the live ones (psutil)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    try:
        import psutil

        for c in psutil.Process().children():
            try:
                t = c.cpu_times()
                total += t.user + t.system
            except psutil.Error:  # exited between listing and reading: counted by getrusage once reaped
                pass
    except ImportError:
        pass
    return total


def _loader_child(run: LoaderRun, queue) -> None:
    """In a fresh (spawned) process: stream windows, report rates, CPU per window and RSS high-water marks.

    The wait for each epoch's first batch (worker start-up, first pieces read) is left out of the timed segments
    and reported as `startup_s`; the loader pays it once per epoch, not per window."""
    try:
        # A spawned process would spawn its DataLoader workers too (seconds of imports per epoch); a training rank
        # forks them, and so do these runs.
        mp.set_start_method("fork", force=True)
        import torch

        from deepj.data.loader import DataConfig, StreamingLoader

        torch.set_num_threads(1)  # the loader is numpy work; intra-op threads would only compete with the workers
        cfg = DataConfig(dir=run.shard_dir, seq_len=run.seq_len, stride=run.stride, workers=run.workers)
        loader = StreamingLoader(cfg, "train", micro_batch=run.batch, global_batch=run.batch)
        rss_before = _vm_kb("VmRSS")
        worker_hwm: dict[int, int] = {}

        def sample_workers() -> None:  # VmHWM only grows, so sampling before a worker exits catches its peak
            for pid in _child_pids():
                worker_hwm[pid] = max(worker_hwm.get(pid, 0), _vm_kb("VmHWM", pid))

        segments, startups = [], []
        it, last_sample = None, 0.0
        for _ in range(run.segments):
            windows, busy, cpu_main, cpu_kids = 0, 0.0, 0.0, 0.0
            while busy < run.seconds and not (run.max_windows and windows >= run.max_windows):
                if it is None:  # a new epoch: its first batch is start-up, not throughput
                    t = time.perf_counter()
                    it = iter(loader)
                    next(it)
                    startups.append(time.perf_counter() - t)
                t, m, k = time.perf_counter(), time.process_time(), _children_cpu_s()
                n = 0
                for batch in it:
                    n += batch["notes"].shape[0]  # (B, L+1, N, 3)
                    now = time.perf_counter()
                    if now - last_sample > 0.2:
                        sample_workers()
                        last_sample = now
                    if busy + now - t >= run.seconds or (run.max_windows and windows + n >= run.max_windows):
                        break
                else:
                    it = None  # epoch finished
                sample_workers()
                windows, busy = windows + n, busy + time.perf_counter() - t
                cpu_main, cpu_kids = cpu_main + time.process_time() - m, cpu_kids + _children_cpu_s() - k
            segments.append({"windows": windows, "busy_s": busy, "windows_per_s": windows / busy if busy else 0.0,
                             "cpu_main_s": cpu_main, "cpu_workers_s": cpu_kids})
        if it is not None:
            it.close()  # shuts the workers down
        rates = sorted(s["windows_per_s"] for s in segments)
        windows = sum(s["windows"] for s in segments)
        loading_cpu = sum(s["cpu_workers_s" if run.workers else "cpu_main_s"] for s in segments)
        queue.put({"ok": True, "workers": run.workers, "windows": windows,
                   "windows_per_s": rates[-1], "windows_per_s_median": rates[len(rates) // 2],
                   "segments": segments, "startup_s": startups, "total_windows": loader.total_windows,
                   # CPU time of the processes that cut windows (the workers, or the main process with 0 workers):
                   # the rate one such process reaches with a core of its own, whatever else loads the machine.
                   "cpu_us_per_window": loading_cpu / windows * 1e6 if windows else 0.0,
                   "main_cpu_us_per_window": sum(s["cpu_main_s"] for s in segments) / windows * 1e6
                   if windows else 0.0,
                   "rss_before_mb": rss_before / 1024, "peak_rss_mb": _vm_kb("VmHWM") / 1024,
                   "worker_peak_rss_mb": max(worker_hwm.values(), default=0) / 1024, "load": _load()})
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it with the run's settings
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def measure_loader(run: LoaderRun) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_loader_child, args=(run, queue))
    proc.start()
    try:
        result = queue.get(timeout=run.seconds + 300)
    finally:
        proc.join(timeout=60)
    if not result["ok"]:
        raise RuntimeError(f"loader run {dataclasses.asdict(run)} failed: {result['error']}")
    return result


# --------------------------------------------------------------------------------------------------- report

def table(res: dict[str, Any]) -> str:
    def f(x, spec=",.0f"):
        return "-" if x is None else format(x, spec)

    rows = []
    if res.get("files_per_s_pipeline") is not None:
        rows += [
            ("reading, pipeline (process_file, symusic), 1 process", f"{f(res['files_per_s_pipeline'])} files/s, "
             f"{f(res['mb_per_s'], '.1f')} MB/s"),
            ("reading, pretty_midi.PrettyMIDI alone, 1 process", f"{f(res['files_per_s_pretty_midi'])} files/s, "
             f"{f(res['mb_per_s_pretty_midi'], '.2f')} MB/s"),
            ("speedup vs pretty_midi (best; median of runs; by CPU time)",
             f"{f(res['speedup_vs_pretty_midi'], '.1f')}x; {f(res['speedup_median_of_runs'], '.1f')}x; "
             f"{f(res['speedup_cpu_median_of_runs'], '.1f')}x"),
        ]
        for w, s in res["preprocess_wall_s"].items():
            rows.append((f"preprocess whole set ({res['preprocess_files']} files), --workers {w}",
                         f"{s:.2f} s ({res['preprocess_files_per_s'][w]:,.0f} files/s)"))
        alone = res["preprocess_files"] / res["files_per_s_pretty_midi"]
        rows.append((f"  vs pretty_midi parsing the set alone ({alone:.1f} s)",
                     f"{res['parallel_speedup_vs_pretty_midi']:.1f}x faster with --workers {res['parallel_workers']}"))
    rows += [
        ("shard bytes (tar files, all splits)", f"{res['shard_bytes']:,}"),
        ("dense float32 rolls (T x N x 3 x 4)", f"{res['dense_bytes']:,}"),
        ("compression ratio", f"{res['compression_ratio']:.1f}x"),
    ]
    for w, r in res["loader_windows_per_s"].items():
        rows.append((f"loader windows/s, {w} workers" + (" (in-process)" if w == "0" else ""),
                     f"{r:,.0f} wall ({res['loader_windows_per_s_per_process'][w]:,.0f} per loading process); "
                     f"{f(res['loader_windows_per_cpu_s'][w])} per CPU-second of a loading process"))
    rows += [("loader peak RSS (largest process)", f"{res['peak_rss_mb']:.0f} MB"),
             (f"loader RSS, 1x vs {REPLICAS}x shards (in-process)", f"{res['rss_1x_mb']:.0f} MB vs "
              f"{res['rss_10x_mb']:.0f} MB")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepj.bench data", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--midi", type=Path, default=None, help="folder of MIDI files (default: the demo corpus)")
    ap.add_argument("--shards", type=Path, default=None, help="shard folder whose loader to measure; without "
                    "--midi the reading part is skipped")
    ap.add_argument("--seconds", type=finite_float(0, lo_open=True), default=5.0, help="bound of each timed loop")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each reading/preprocess timing and timed "
                    "loader segments (best and median reported)")
    ap.add_argument("--batch", type=int, default=16, help="loader micro-batch (windows per batch)")
    ap.add_argument("--workers-list", default="0,1,2", help="DataLoader worker counts to measure")
    ap.add_argument("--shard-size-mb", type=finite_float(0, lo_open=True), default=0.1,
                    help="shard size of the benchmark's preprocessing (small, so that the demo's train split spans "
                    "several shards)")
    ap.add_argument("--min-steps", type=int, default=32, help="preprocess --min-steps")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:  # --seconds and --shard-size-mb: their type (finite, > 0)
        ap.error("--repeats and --batch must be at least 1")
    try:
        worker_counts = [int(w) for w in args.workers_list.split(",") if w.strip()]
    except ValueError:
        ap.error(f"--workers-list: comma-separated integers, got {args.workers_list!r}")
    if not worker_counts or min(worker_counts) < 0:
        ap.error("--workers-list needs at least one count >= 0")
    if args.shards is not None and not (args.shards / "manifest.json").is_file():
        ap.error(f"--shards {args.shards}: no manifest.json there (make one with python -m deepj.preprocess)")

    res: dict[str, Any] = {"command": "python -m deepj.bench data " + " ".join(argv if argv is not None
                                                                             else sys.argv[1:]),
                           "load_start": _load(), "seconds": args.seconds, "batch": args.batch}
    work = Path(tempfile.mkdtemp(prefix="deepj-bench-data-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        shard_dir = args.shards
        midi_dir = args.midi
        if midi_dir is None and shard_dir is None:
            from deepj.corpus.demo import build_demo_corpus

            midi_dir = build_demo_corpus(progress=False)
        if midi_dir is not None:
            from deepj.corpus.folder import iter_midi_paths

            files = [p for p, _ in iter_midi_paths(midi_dir) if p.is_file()]
            if not files:
                ap.error(f"--midi {midi_dir}: no .mid/.midi files")
            print(f"reading {len(files)} MIDI files from {midi_dir} ...", file=sys.stderr)
            reading = measure_reading(files, args.seconds, args.repeats, args.min_steps)
            res.update({k: v for k, v in reading.items() if k != "pretty_midi_refused"})
            res["pretty_midi_refused"] = len(reading["pretty_midi_refused"])
            print("preprocessing ...", file=sys.stderr)
            pre, made = measure_preprocess(midi_dir, work, args.shard_size_mb, args.min_steps, args.repeats)
            res.update(pre)
            # pretty_midi parsing alone over the whole set, one process (from its measured rate), vs the whole
            # parallel preprocess run (parse, quantize, split, write shards):
            res["parallel_speedup_vs_pretty_midi"] = (pre["preprocess_files"] / res["files_per_s_pretty_midi"]
                                                      / pre["parallel_wall_s"])
            res["midi_dir"] = str(midi_dir)
            if shard_dir is None:
                shard_dir = made
        else:
            res.update(files_per_s_pipeline=None, files_per_s_pretty_midi=None, speedup_vs_pretty_midi=None,
                       mb_per_s=None)
        res.update(measure_sizes(shard_dir))
        res["shard_dir"] = str(shard_dir) if args.shards is not None else "(temp) " + str(shard_dir)

        print("loader ...", file=sys.stderr)
        loader = {str(w): measure_loader(LoaderRun(str(shard_dir), w, args.batch, args.seconds, args.repeats))
                  for w in worker_counts}
        one_epoch = next(iter(loader.values()))["total_windows"]
        big = replicate_shards(shard_dir, work / f"shards-{REPLICAS}x", REPLICAS)
        # In-process, so that one process holds all loader memory: the 0-worker run above is the 1x figure (else one
        # epoch, or what `seconds` allows); 10x then reads the same number of windows (time only as a safeguard).
        rss = {"1x": loader["0"] if "0" in loader else
               measure_loader(LoaderRun(str(shard_dir), 0, args.batch, args.seconds, max_windows=one_epoch))}
        rss["10x"] = measure_loader(LoaderRun(str(big), 0, args.batch, 10 * args.seconds,
                                              max_windows=rss["1x"]["windows"]))
        res["loader_windows_per_s"] = {w: r["windows_per_s"] for w, r in loader.items()}
        res["loader_windows_per_s_per_process"] = {w: r["windows_per_s"] / max(1, int(w)) for w, r in loader.items()}
        res["loader_windows_per_cpu_s"] = {w: 1e6 / r["cpu_us_per_window"] if r["cpu_us_per_window"] else None
                                           for w, r in loader.items()}
        res["loader_runs"] = loader
        res["peak_rss_mb"] = max(max(r["peak_rss_mb"], r["worker_peak_rss_mb"]) for r in loader.values())
        res["rss_1x_mb"], res["rss_10x_mb"] = rss["1x"]["peak_rss_mb"], rss["10x"]["peak_rss_mb"]
        res["rss_windows"] = {k: r["windows"] for k, r in rss.items()}
        res["rss_runs"] = {k: r for k, r in rss.items() if r is not loader.get("0")}  # 1x is often loader_runs["0"]
        res["load_end"] = _load()
        res["machine"] = machine_info()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
