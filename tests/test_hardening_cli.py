"""Hardening: every float setting finite and in range (configs and CLIs); every bad CLI argument a sentence naming the
option, exit status 2, refused before anything is loaded or any folder made (docs/design.md, the table of bad inputs).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import typing

import pytest
from conftest import REPO, run_cli

from deepj import config
from deepj.bench import bl2012
from deepj.config import ConfigError, finite_float, int_range
from deepj.data.loader import DataConfig
from deepj.model import ModelConfig
from deepj.music.styles import StyleError, StyleTree, parse_spec
from deepj.sampling import SampleConfig
from deepj.training.config import TrainConfig
from deepj.training.optim import OptimConfig

NON_FINITE = ("nan", "inf", "-inf", "1e999")


def argparse_refusal(capsys, parse, argv) -> str:
    """Run `parse(argv)`, expect argparse's exit status 2, return what it printed to stderr."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ configs
def test_config_files_and_overrides_refuse_non_finite_floats(tmp_path):
    for raw in NON_FINITE:
        with pytest.raises(ConfigError, match=r"^optim\.lr: expected a finite number, got -?(nan|inf)$"):
            config.load(TrainConfig, overrides=[f"optim.lr={raw}"])
    with pytest.raises(ConfigError, match=r"^model\.lower_dropout: expected a finite number, got nan$"):
        config.load(TrainConfig, overrides=["model.lower_dropout=nan"])  # an optional float too
    with pytest.raises(ConfigError, match=r"^train\.max_minutes: expected a finite number, got inf$"):
        config.load(bl2012.BL2012Config, overrides=["train.max_minutes=inf"])
    for toml in ("lr = nan", "lr = inf", "lr = -inf"):  # TOML's own literals
        (tmp_path / "c.toml").write_text(f"[optim]\n{toml}\n")
        with pytest.raises(ConfigError, match=r"^optim\.lr: expected a finite number"):
            config.load(TrainConfig, tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("[optim]\nlr = 1" + "0" * 400 + "\n")  # an integer no float can hold
    with pytest.raises(ConfigError, match=r"^optim\.lr: expected a finite number, got an integer of 401 digits$"):
        config.load(TrainConfig, tmp_path / "c.toml")
    # Nothing shipped relies on a non-finite value: every config still loads against its class.
    for path in sorted((REPO / "configs").glob("*.toml")):
        config.load(TrainConfig, path)
    for path in sorted((REPO / "configs" / "bl2012").glob("*.toml")):
        config.load(bl2012.BL2012Config, path)


def float_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] in (float, float | None)]


def test_every_float_field_has_a_finite_range():
    """Built directly (not through _coerce), each float field of each config refuses nan and +-inf by name."""
    for cls in (ModelConfig, SampleConfig, DataConfig, OptimConfig, bl2012.BL2012Train):
        assert float_fields(cls), cls
        for name in float_fields(cls):
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(ConfigError, match=rf"\.{name}\b"):
                    cls(**{name: bad})


def test_sample_config_ranges_name_the_key():
    with pytest.raises(ConfigError, match=r"^sample\.temperature must be > 0 and finite, got nan$"):
        SampleConfig(temperature=math.nan)
    with pytest.raises(ConfigError, match=r"^sample\.silence_step must be >= 0 and finite, got inf$"):
        SampleConfig(silence_step=math.inf)
    with pytest.raises(ConfigError, match=r"^train\.max_minutes must be >= 0 and finite \(0 = none\), got nan$"):
        bl2012.BL2012Train(max_minutes=math.nan)


# ------------------------------------------------------------------------------------------------ argparse types
def test_finite_float_and_int_range_types(capsys):
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--t", type=finite_float(0, lo_open=True))
    p.add_argument("--w", type=finite_float(0, 1))
    p.add_argument("--k", type=int_range(0, 9))
    assert p.parse_args(["--t", "1e-6", "--w", "0", "--k", "9"]) == argparse.Namespace(t=1e-6, w=0.0, k=9)
    for raw in (*NON_FINITE, "0", "x"):
        err = argparse_refusal(capsys, p.parse_args, [f"--t={raw}"])  # "=": argparse reads -inf as an option
        assert f"prog: error: argument --t: must be a finite number > 0, got '{raw}'" in err
    err = argparse_refusal(capsys, p.parse_args, ["--w", "1.5"])
    assert "argument --w: must be a finite number >= 0 and <= 1, got '1.5'" in err
    err = argparse_refusal(capsys, p.parse_args, ["--k", "10"])
    assert "argument --k: must be an integer in [0, 9], got '10'" in err


# ------------------------------------------------------------------------------------------------ styles
def test_style_weights_must_be_finite():
    for raw in NON_FINITE:
        with pytest.raises(StyleError, match="is not a finite number"):
            parse_spec(f"bach={raw}")
    tree = StyleTree.from_leaves(["baroque/bach", "classical/mozart"])
    with pytest.raises(StyleError, match=r"style weight in 'bach=nan' is not a finite number"):
        tree.vector(["bach=nan", "mozart"])
    with pytest.raises(StyleError, match="too large to add up"):  # each finite, their sum not
        tree.vector(["bach=1e308", "mozart=1e308"])
    assert tree.vector(["bach=3", "mozart=1"]).tolist() == [0.75, 0.25]


# ------------------------------------------------------------------------------------------------ deepj.generate
def test_generate_non_finite_temperature_or_weight_exits_2_and_writes_nothing(trained_run, tmp_path):
    """Item 11: these used to exit 0 and write silent or noise pieces."""
    for flag, value in (("--temperature", "nan"), ("--temperature", "inf"), ("--style", "baroque=nan"),
                        ("--style", "baroque=inf")):
        out = tmp_path / f"{flag}-{value}"
        style = [] if flag == "--style" else ["--style", "baroque"]
        res = run_cli("-m", "deepj.generate", str(trained_run), *style, flag, value, "--bars", "1", "--out", str(out))
        said = (f"style weight in '{value}' is not a finite number" if flag == "--style"
                else f"must be a finite number > 0, got '{value}'")
        assert res.returncode == 2 and f"error: argument {flag}: {said}" in res.stderr, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and not out.exists()


def test_generate_checks_every_argument_before_loading_or_making_a_folder(tmp_path, capsys):
    """Item 12: each bad value is refused by name, before the checkpoint is read (here it does not even exist) and
    before the output folder is made."""
    from deepj import generate

    out = tmp_path / "out"
    for argv, named in ((["--temperature", "0"], "--temperature"), (["--temperature", "-1"], "--temperature"),
                        (["--bars", "0"], "--bars"), (["--num", "0"], "--num"),
                        (["--silence-redraws", "-1"], "--silence-redraws"), (["--seed", "-1"], "--seed"),
                        (["--seed", str(2**64)], "--seed"), (["--device", "foo"], "--device"),
                        (["--style", "bach=x"], "--style")):
        err = argparse_refusal(capsys, generate.main,
                               [str(tmp_path / "no-run"), "--style", "baroque", *argv, "--out", str(out)])
        assert f"error: argument {named}: " in err and "does not exist" not in err, err
        assert not out.exists()


def test_generate_out_that_is_a_file_is_refused(trained_run, tmp_path, capsys):
    from deepj import generate

    file = tmp_path / "a-file"
    file.write_text("not a folder")
    assert generate.main([str(trained_run), "--style", "baroque", "--bars", "1", "--out", str(file)]) == 2
    assert f"error: --out: {file} exists and is not a folder" in capsys.readouterr().err
    assert generate.main([str(trained_run), "--style", "baroque", "--bars", "1", "--out", str(file / "sub")]) == 2
    assert f"error: --out: {file} is not a folder, so {file / 'sub'} cannot be made" in capsys.readouterr().err
    assert file.read_text() == "not a folder"


def test_generate_unknown_style_makes_no_folder(trained_run, tmp_path, capsys):
    from deepj import generate

    run = tmp_path / "run"  # a copy: the default output folder lies inside the run folder
    shutil.copytree(trained_run, run)
    assert generate.main([str(run), "--style", "chopin", "--bars", "1"]) == 2
    assert "unknown style 'chopin'" in capsys.readouterr().err
    assert not (run / "samples").exists()
    (run / "samples").write_text("a file where the default output folder goes")
    assert generate.main([str(run), "--style", "baroque", "--bars", "1"]) == 2
    assert "output folder: " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ deepj.evaluate
def test_evaluate_checks_its_options_before_the_checkpoint(tmp_path, capsys):
    from deepj import evaluate

    for argv, named in ((["--batch-size", "0"], "--batch-size"), (["--batches", "-1"], "--batches"),
                        (["--seq-len", "-1"], "--seq-len"), (["--stride", "x"], "--stride"),
                        (["--device", "foo"], "--device")):
        err = argparse_refusal(capsys, evaluate.main, [str(tmp_path / "no-run"), "--data", str(tmp_path), *argv])
        assert f"error: argument {named}: " in err and "does not exist" not in err, err


# ------------------------------------------------------------------------------------------------ deepj.fidelity
def test_fidelity_options_refuse_non_finite_and_out_of_range(tmp_path, capsys):
    from deepj import fidelity as fd
    from deepj.evaluation.classifier import FidelityError

    for raw in NON_FINITE:
        err = argparse_refusal(capsys, fd.parse_args, ["run", "--data", "x", f"--temperature={raw}"])
        assert f"error: argument --temperature: must be a finite number, got '{raw}'" in err
    assert "argument --device" in argparse_refusal(capsys, fd.parse_args, ["run", "--data", "x", "--device", "foo"])
    with pytest.raises(FidelityError, match=r"^--temperature must be > 0 and finite, got -0.5$"):
        fd.options(fd.parse_args(["run", "--data", "x", "--temperature", "-0.5"]))
    with pytest.raises(FidelityError, match=r"^--seed must lie in \[0, "):
        fd.options(fd.parse_args(["run", "--data", "x", "--seed", "-1"]))
    with pytest.raises(FidelityError, match=r"^--max-windows must be at least 1, got 0$"):
        fd.options(fd.parse_args(["run", "--data", "x", "--max-windows", "0"]))
    (tmp_path / "file").write_text("")
    with pytest.raises(FidelityError, match=r"^--out: .* exists and is not a folder$"):
        fd.options(fd.parse_args(["run", "--data", "x", "--out", str(tmp_path / "file")]))


def test_fidelity_refuses_blend_and_report_folder_before_any_work(trained_run, tiny_shards, tmp_path, monkeypatch,
                                                                   capsys):
    from deepj import fidelity as fd

    def no_work(*args, **kwargs):
        raise AssertionError("generated music before refusing the arguments")

    monkeypatch.setattr(fd, "generate_rolls", no_work)
    monkeypatch.setattr(fd, "real_windows", no_work)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    base = [str(run), "--data", str(tiny_shards), "--num", "1", "--no-audio"]
    assert fd.main([*base, "--blend", "bach,handel"]) == 2  # composers, judged by the composer level only
    assert "--blend bach,handel needs --level composer" in capsys.readouterr().err
    (run / "eval").write_text("a file where the report folder goes")
    assert fd.main(base) == 2
    assert f"error: report folder: {run / 'eval'} exists and is not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bench, launch
def test_bench_and_launch_float_options_are_finite_and_in_range(capsys, monkeypatch):
    from deepj.bench import data as bench_data
    from deepj.bench import generate as bench_generate
    from deepj.bench import step as bench_step
    from deepj.bench import train as bench_train
    from deepj.launch import __main__ as launch

    for raw in ("nan", "inf", "0"):
        err = argparse_refusal(capsys, bench_generate.parse_args, ["--device", "cpu", "--max-seconds", raw])
        assert f"argument --max-seconds: must be a finite number > 0, got '{raw}'" in err
        err = argparse_refusal(capsys, launch.parse_args, ["plan", "--gpu-memory-gib", raw])
        assert f"argument --gpu-memory-gib: must be a finite number > 0, got '{raw}'" in err

    def past_parsing():
        raise AssertionError("bench data went past its argument checks")

    monkeypatch.setattr(bench_data, "_load", past_parsing)  # the first thing main does after checking arguments
    for flag in ("--seconds", "--shard-size-mb"):
        err = argparse_refusal(capsys, bench_data.main, [flag, "nan"])
        assert f"argument {flag}: must be a finite number > 0, got 'nan'" in err
    # Lists and devices: a sentence, not a ValueError or a torch RuntimeError.
    assert "--batches: comma-separated integers" in argparse_refusal(
        capsys, bench_generate.parse_args, ["--device", "cpu", "--batches", "1,x"])
    assert "--batches: comma-separated integers >= 1" in argparse_refusal(
        capsys, bench_train.parse_args, ["--device", "cpu", "--batches", "1,x"])
    assert "argument --device: must be cpu, cuda or cuda:N" in argparse_refusal(
        capsys, bench_train.parse_args, ["--device", "foo"])
    assert "argument --device: must be cpu, cuda or cuda:N" in argparse_refusal(
        capsys, bench_step.parse_args, ["--device", "foo"])


def test_bench_step_config_error_is_a_sentence(capsys):
    from deepj.bench import step as bench_step

    assert bench_step.main(["--config", str(REPO / "configs" / "debug.toml"), "optim.lr=nan"]) == 2
    assert "error: optim.lr: expected a finite number, got nan" in capsys.readouterr().err


def test_no_output_folder_is_left_by_a_refused_generate(trained_run, tmp_path):
    """The command as a user runs it: `--temperature 0` used to fail with a traceback after making the folder."""
    out = tmp_path / "samples"
    res = run_cli("-m", "deepj.generate", str(trained_run), "--style", "baroque", "--temperature", "0",
                  "--out", str(out))
    assert res.returncode == 2 and "argument --temperature: must be a finite number > 0, got '0'" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_listening_page_of_a_broken_report_is_a_sentence(tmp_path, capsys):
    from deepj.evaluation import listening

    (tmp_path / "fidelity.json").write_text("{not json")
    assert listening.main([str(tmp_path)]) == 2
    assert f"error: {tmp_path / 'fidelity.json'} is not valid JSON" in capsys.readouterr().err
