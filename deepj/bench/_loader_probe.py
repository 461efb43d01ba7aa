"""Stage 3 of `python -m deepj.bench scale`: one loader run in a fresh process, with its rate, first batch, bytes
read and memory peaks (deepj/bench/scale.py's docstring says what each figure means)."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from queue import Empty
from typing import Any

from deepj.bench.data import _child_pids, _load, _vm_kb

SEQ_LEN, STRIDE = 128, 16  # the loader's windows (DataConfig's defaults)


@dataclasses.dataclass(frozen=True)
class LoaderSpec:
    shard_dir: str
    workers: int
    batch: int
    windows: int
    cache_mb: int
    shuffle_mb: int
    mmap_threshold: int = 0


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its RSS now (`5` into /proc/self/clear_refs, Linux >= 4.0), so that the peak
    read later is the loader's, not the imports' transient one; False where the kernel refuses (the peak then
    includes the imports, an overestimate)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _private_kb(pid: int) -> int:
    """Memory of a process that no other maps (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup, kB): for
    a forked worker, what it allocated and the parent pages it wrote to; 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (OSError, ValueError, IndexError):
        return 0


def _loader_child(spec: LoaderSpec, queue) -> None:
    """In a fresh spawned process: stream spec.windows windows, report rate, first batch, bytes and peaks."""
    try:
        # A spawned process inherits "spawn" as its default start method, and the DataLoader would then spawn its
        # workers too (seconds of imports each epoch, and aborts at shutdown); a training rank forks them.
        mp.set_start_method("fork", force=True)
        if spec.mmap_threshold:  # glibc's M_MMAP_THRESHOLD (-3), fixed: also stops glibc raising it (see --help)
            import ctypes

            ctypes.CDLL("libc.so.6").mallopt(-3, spec.mmap_threshold)
        import torch

        import deepj.data.loader as loader_module
        from deepj.data.loader import DataConfig, StreamingLoader

        torch.set_num_threads(1)  # the loader is numpy work; intra-op threads would only compete with workers
        # Each worker's own baseline, as it starts (torch imported, no batch yet): its RSS in the worker's init hook.
        started = mp.get_context("fork").SimpleQueue()
        init = loader_module._worker_signals

        def init_and_report(worker_id: int) -> None:
            init(worker_id)
            started.put((os.getpid(), _vm_kb("VmRSS")))

        loader_module._worker_signals = init_and_report
        baseline = _vm_kb("VmRSS")
        reset = _reset_peak()
        t0 = time.perf_counter()
        cfg = DataConfig(dir=spec.shard_dir, seq_len=SEQ_LEN, stride=STRIDE, workers=spec.workers,
                         cache_mb=spec.cache_mb, shuffle_mb=spec.shuffle_mb)
        loader = StreamingLoader(cfg, "train", micro_batch=spec.batch, global_batch=spec.batch)
        worker_base: dict[int, int] = {}
        it, left = iter(loader), len(loader)
        first = windows = next(it)["notes"].shape[0]  # timed as start-up, not throughput
        first_s, epochs = time.perf_counter() - t0, 1
        left -= 1
        worker_hwm: dict[int, int] = {}
        worker_private: dict[int, int] = {}

        def sample() -> None:
            for pid in _child_pids():
                worker_hwm[pid] = max(worker_hwm.get(pid, 0), _vm_kb("VmHWM", pid))
                worker_private[pid] = max(worker_private.get(pid, 0), _private_kb(pid))

        sample()
        t1 = last = time.perf_counter()
        while windows < spec.windows:
            if left == 0:  # the epoch's workers are up until the next iter(); the restart counts in the rate
                sample()
                it.close()
                it, left, epochs = iter(loader), len(loader), epochs + 1
            windows += next(it)["notes"].shape[0]
            left -= 1
            if time.perf_counter() - last >= 0.1:
                sample()
                last = time.perf_counter()
        sample()
        elapsed = time.perf_counter() - t1
        it.close()  # stops the workers
        while not started.empty():
            pid, rss = started.get()
            worker_base[pid] = rss
        queue.put({"ok": True, "workers": spec.workers, "windows": windows, "epochs": epochs,
                   "windows_per_s": (windows - first) / elapsed if elapsed > 0 else 0.0,
                   "first_batch_s": first_s, "bytes_read": loader.bytes_read,
                   "bytes_per_window": loader.bytes_read / windows, "baseline_mb": baseline / 1024,
                   "peak_reset": reset, "main_above_baseline_mb": (_vm_kb("VmHWM") - baseline) / 1024,
                   "workers_baseline_mb": [worker_base[p] / 1024 for p in worker_hwm if p in worker_base],
                   "workers_above_baseline_mb": [(h - worker_base[p]) / 1024 for p, h in worker_hwm.items()
                                                 if p in worker_base],
                   "workers_private_mb": [k / 1024 for k in worker_private.values()],
                   "load": _load()})
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it with the run's settings
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def measure_loader(spec: LoaderSpec) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # a fresh process: its RSS and peak are this run's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=_loader_child, args=(spec, queue))
    proc.start()
    while True:  # as long as the run takes, but not past a crash that left no result
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"loader run {dataclasses.asdict(spec)} died, exit status {proc.exitcode}") from None
    proc.join(timeout=60)
    if not result["ok"]:
        raise RuntimeError(f"loader run {dataclasses.asdict(spec)} failed: {result['error']}")
    # A worker's figure against the main process's RSS understates its growth by what of the parent it never maps;
    # its private memory (sampled) does not, so the larger of the two is the worker's.
    result["peak_above_baseline_mb"] = max([result["main_above_baseline_mb"], *result["workers_above_baseline_mb"]])
    return result


