"""`python -m deepj.bench train` on CPU with a tiny model (its CUDA parts run on the H100, docs/benchmarks.md): the
rows and figures of the JSON line, and the multi-GPU estimate's arithmetic by hand."""

from __future__ import annotations

import json

import pytest

import deepj.bench.train as bench
from deepj.model import ModelConfig
from deepj.training.logger import flops_per_window

TINY = ["model.time_hidden=16", "model.note_hidden=8", "model.conv_filters=8", "model.style_dim=8", "data.seq_len=8"]


def test_rows_and_figures_on_cpu(capsys):
    code = bench.main(["--device", "cpu", "--batches", "1,3", "--precisions", "fp32,bf16", "--steps", "2",
                       "--warmup", "1", *TINY])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = report["rows"]
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 3), ("bf16", 1), ("bf16", 3)]
    cfg = ModelConfig(num_notes=48, num_styles=bench.NUM_STYLES, time_hidden=16, note_hidden=8, conv_filters=8,
                      style_dim=8)
    assert report["flops_per_window"] == flops_per_window(cfg, 8)
    for r in rows:
        assert "error" not in r, r
        assert r["windows_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["note_steps_per_s"] == pytest.approx(r["batch"] * 8 * 48 / r["step_s"])
        assert r["tflops"] == pytest.approx(report["flops_per_window"] * r["batch"] / r["step_s"] / 1e12)
        assert 0.5 < r["first_loss"] < 5  # untrained: two BCE terms near ln 2 each plus a small volume term
    assert report["lstm_compute_dtypes"] == {"fp32": ["float32"], "bf16": ["bfloat16"]}
    best = max(rows, key=lambda r: r["windows_per_s"])
    assert report["best"] == best
    assert [s["gpus"] for s in report["scaling"]] == [1, 8, 32]
    assert report["scaling"][0]["efficiency"] == 1.0


def test_allreduce_and_scaling_arithmetic():
    # Ring all-reduce of 8 MB over 8 ranks at 100 GB/s, 10 us per step: 2*7/8*8e6/1e11 s + 14 * 10 us = 280 us.
    assert bench.allreduce_s(8e6, 8, 100.0, 10.0) == pytest.approx(140e-6 + 140e-6)
    assert bench.allreduce_s(8e6, 1, 100.0, 10.0) == 0.0
    rows = bench.scaling_estimate(step_s=0.1, batch=64, grad_bytes=4_000_000)
    nvl, ib = bench.LINKS["nvlink4"], bench.LINKS["ib_ndr"]
    one_node = bench.allreduce_s(4e6, 8, nvl["bus_gb_s"], nvl["latency_us"])
    four_nodes = one_node + bench.allreduce_s(4e6 / 8, 4, ib["bus_gb_s"], ib["latency_us"])
    assert rows[1]["step_ms"] == pytest.approx((0.1 + one_node) * 1e3, abs=1e-3)
    assert rows[2]["step_ms"] == pytest.approx((0.1 + four_nodes) * 1e3, abs=1e-3)
    assert rows[2]["global_batch"] == 64 * 32
    assert rows[2]["efficiency"] == pytest.approx(0.1 / (0.1 + four_nodes), abs=1e-4)
    assert rows[1]["efficiency"] > rows[2]["efficiency"]  # slower links between nodes cost more
