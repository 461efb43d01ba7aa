"""The listening page of a fidelity evaluation: per style, real and generated piano rolls and audio next to the
classifier's verdict and the music statistics; the confusion matrices and the blend curve on top.

`deepj.fidelity` calls `export_pieces`, `confusion_png`, `blend_png` and `write_page`;
`python -m deepj.evaluation.listening EVAL_DIR` rebuilds `index.html` from an existing `fidelity.json`. Every link is
relative to the page's folder, so the folder can be copied or served as it is. Audio is WAV through FluidSynth
(`deepj.music.render`), where it is installed; MIDI files are always linked.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np

from deepj.music.midi_io import write_midi
from deepj.music.render import audio_available, render_wav, save_png
from deepj.music.representation import ReprConfig, notes_to_roll, roll_to_notes
from deepj.music.styles import slug

PAGE = "index.html"


# ------------------------------------------------------------------------------------------------ pieces
def export_piece(roll: np.ndarray, stem: Path, title: str, rcfg: ReprConfig, audio: bool, root: Path) -> dict:
    """Roll (T, N, 3) -> stem.mid, stem.png and (with audio) stem.wav; returns their paths relative to `root`."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    notes = roll_to_notes(roll, rcfg)
    entry = {"title": title, "notes": int(len(notes)),
             "mid": write_midi(notes, stem.with_suffix(".mid")), "png": save_png(roll, stem.with_suffix(".png"), title)}
    if audio and len(notes):
        entry["wav"] = render_wav(entry["mid"], stem.with_suffix(".wav"))
    return {k: (v.relative_to(root).as_posix() if isinstance(v, Path) else v) for k, v in entry.items()}


def export_pieces(root: Path, level: str, style: str, gen_rolls: np.ndarray, real_notes: list[np.ndarray],
                  window: int, rcfg: ReprConfig, k: int, audio: bool) -> dict:
    """The first k generated pieces of a style (N, T, N, 3) and one held-out real window, under pieces/<level>/."""
    audio = audio and audio_available()[0]
    folder = root / "pieces" / level / slug(style)
    out = {"generated": [export_piece(r, folder / f"generated-{i:02d}", f"{style}: generated #{i}", rcfg, audio, root)
                         for i, r in enumerate(gen_rolls[:k])], "real": []}
    if k and real_notes:
        roll = notes_to_roll(real_notes[0], rcfg, 0, window)
        out["real"].append(export_piece(roll, folder / "real-00", f"{style}: real (held out)", rcfg, audio, root))
    return out


# ------------------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(cm, classes: list[str], title: str, path: Path, ylabel: str = "true style") -> Path:
    """Row-normalised confusion matrix (rows: true / requested class), with the counts written in the cells."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(3.6, 0.45 * len(classes) + 1.8)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    short = [c.split("/")[-1] for c in classes]
    ax.set_xticks(range(len(classes)), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), short, fontsize=7)
    ax.set_xlabel("classified as")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def blend_png(blend: dict, path: Path) -> Path:
    plt = _plt()
    w = [r["w"] for r in blend["rows"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(w, [r["p_a"] for r in blend["rows"]], yerr=[r["p_a_std"] for r in blend["rows"]], marker="o",
                capsize=3, label=f"mean P({blend['a']})")
    ax.plot(w, [r["p_b"] for r in blend["rows"]], marker="s", label=f"mean P({blend['b']})")
    ax.plot(w, [r["frac_a"] for r in blend["rows"]], ls="--", marker=".", label=f"classified as {blend['a']}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set_xlabel(f"blend weight w of {blend['a']}  (style = w*{blend['a']} + (1-w)*{blend['b']})")
    ax.set_ylabel("classifier probability / fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"blend {blend['a']} / {blend['b']} ({blend['level']} classifier)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ report
def write_report(report: dict, out: Path, pieces: dict, rcfg: ReprConfig, *, listen: int, audio: bool,
                 log=print) -> list[Path]:
    """Pieces, figures, fidelity.json, fidelity.md, TensorBoard (`<run>/tb`, tags fidelity/...) and index.html.

    `pieces[level]` holds `rolls` (styles, num, T, N, 3) in `generated_styles` order, `real_notes` and `sets`
    (real and generated `musicstats.StatSet`) per style; `pieces["blend"]` the blend's rolls (weights, num, T, N, 3).
    """
    from deepj.evaluation import musicstats

    out.mkdir(parents=True, exist_ok=True)
    window = report["window_steps"]
    for level, lv in report["levels"].items():
        got = pieces[level]
        lv["listen"] = {}
        for i, c in enumerate(lv["generated_styles"]):
            lv["listen"][c] = export_pieces(out, level, c, got["rolls"][i], got["real_notes"][c], window, rcfg,
                                            listen, audio)
            png = out / f"stats-{level}-{slug(c)}.png"
            musicstats.plot_comparison(*got["sets"][c], f"{level} {c}", png)
            lv["stats"][c]["png"] = png.name
        lv["figures"] = {}
        for key, block, ylabel in (("real", lv["real_val"], "true style"), ("generated", lv["generated"],
                                                                             "requested style")):
            png = out / f"confusion-{level}-{key}.png"
            confusion_png(block["confusion"], lv["classes"], f"{level}: {key} "
                                    f"({'held-out windows' if key == 'real' else 'generated pieces'})", png, ylabel)
            lv["figures"][f"confusion_{key}"] = png.name
    if "blend" in report:
        b = report["blend"]
        png = out / f"blend-{slug(b['a'])}-{slug(b['b'])}.png"
        b["png"] = blend_png(b, png).name
        b["listen"] = [export_piece(rs[0], out / "pieces" / "blend" / f"w{round(w * 100):03d}",
                                              f"{w:.2f} {b['a']} + {1 - w:.2f} {b['b']}", rcfg,
                                              audio and listen > 0 and audio_available()[0], out)
                       for w, rs in zip([r["w"] for r in b["rows"]], pieces["blend"])] if listen else []
    paths = [out / "fidelity.json", out / "fidelity.md"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(report_markdown(report))
    write_tensorboard(report, out)
    paths.append(write_page(out, report))
    log("wrote " + ", ".join(str(p) for p in paths))
    return paths


def write_tensorboard(report: dict, out: Path) -> None:
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(report["checkpoint"]).parent / "tb"))
    step = report["step"]
    try:
        for level, lv in report["levels"].items():
            for key, value in (("real_accuracy", lv["real_val"]["accuracy"]),
                               ("real_balanced_accuracy", lv["real_val"]["balanced_accuracy"]),
                               ("generated_accuracy", lv["generated"]["accuracy"]),
                               ("generated_shift_corrected_accuracy", lv["generated_shift_corrected"]["accuracy"])):
                writer.add_scalar(f"fidelity/{level}/{key}", value, step)
            for c in lv["generated_styles"]:
                if lv["generated"]["recall"][c] is not None:
                    writer.add_scalar(f"fidelity/{level}/generated/{c}", lv["generated"]["recall"][c], step)
            for key, name in lv["figures"].items():
                img = matplotlib.image.imread(out / name)[..., :3]  # (H, W, 3) float in [0, 1]
                writer.add_image(f"fidelity/{level}/{key}", img, step, dataformats="HWC")
        if "blend" in report:
            img = matplotlib.image.imread(out / report["blend"]["png"])[..., :3]
            writer.add_image("fidelity/blend", img, step, dataformats="HWC")
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------ the page
def _f(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _piece_cell(p: dict, width: int = 420) -> str:
    e = html.escape
    parts = [f'<a href="{e(p["png"])}"><img src="{e(p["png"])}" alt="{e(p["title"])}" width="{width}"></a>']
    if p.get("wav"):
        parts.append(f'<audio controls preload="none" src="{e(p["wav"])}" style="width:{width}px"></audio>')
    parts.append(f'<div class="small">{e(p["title"])}: {p["notes"]} notes, <a href="{e(p["mid"])}">MIDI</a></div>')
    return "<td>" + "<br>".join(parts) + "</td>"


def _style_section(level: str, style: str, lv: dict) -> str:
    e = html.escape
    gen, real = lv["generated"], lv["real_val"]
    st = lv["stats"].get(style, {})
    listen = lv.get("listen", {}).get(style, {"generated": [], "real": []})
    out = [f'<h3 id="{e(level)}-{e(slug(style))}">{e(level)}: {e(style)}</h3>',
           f'<p>Classifier on generated pieces: <b>{_f(gen["recall"].get(style))}</b> classified as {e(style)} '
           f'(chance {_f(lv["chance"])}), mean P({e(style)}) {_f(gen["mean_prob_true"].get(style))}; on held-out '
           f'real windows: {_f(real["recall"].get(style))} ({real["support"].get(style, 0)} windows).</p>']
    cells = [_piece_cell(p) for p in listen["real"] + listen["generated"]]
    if cells:
        out.append('<table class="pieces"><tr>' + "".join(cells) + "</tr></table>")
    if st.get("png"):
        out.append(f'<p><img src="{e(st["png"])}" alt="statistics of {e(style)}" width="1100"></p>')
    if st.get("oa"):
        out.append("<table><tr><th>statistic</th><th>OA</th><th>real mean</th><th>generated mean</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{_f(v['oa'])}</td><td>{_f(v.get('real_mean'))}</td>"
            f"<td>{_f(v.get('generated_mean'))}</td></tr>" for k, v in st["oa"].items()) + "</table>")
    return "\n".join(out)


def _lead(report: dict) -> str:
    """How generated pieces were cut, when they were not classified from their start (fidelity --lead-bars)."""
    lead = report.get("lead_bars", 0)
    return f" (generated pieces: the {report['bars']} bars after {lead} lead bars)" if lead else ""


def _redraws(report: dict) -> str:
    """How silences were sampled (fidelity --silence-redraws; reports from before it: the paper's sampler)."""
    k = report.get("silence_redraws", 0)
    return f", a step that would begin a silence redrawn up to {k} times" if k else ", the paper's sampler (no redraws)"


def write_page(out_dir: Path, report: dict) -> Path:
    """index.html in out_dir from a fidelity report (paths in it are relative to out_dir)."""
    e = html.escape
    body = ["<h1>DeepJ: listening page</h1>",
            f'<p>Checkpoint <code>{e(report["checkpoint"])}</code> (step {report["step"]}), data '
            f'<code>{e(report["data"])}</code>; windows and pieces of {report["bars"]} bars{_lead(report)}; '
            f'{report["num"]} generated pieces per style (temperature {report["temperature"]}, seed {report["seed"]}'
            f'{_redraws(report)}). '
            f'<a href="fidelity.md">Report</a>, <a href="fidelity.json">JSON</a>.</p>']
    for level, lv in report["levels"].items():
        gen, real = lv["generated"], lv["real_val"]
        body.append(f"<h2>{e(level)} level: {len(lv['classes'])} classes, chance {_f(lv['chance'])}</h2>")
        body.append(f"<p>Classifier accuracy on held-out real windows {_f(real['accuracy'])} (balanced "
                    f"{_f(real['balanced_accuracy'])}, {real['n']} windows); on generated pieces "
                    f"<b>{_f(gen['accuracy'])}</b> ({gen['n']} pieces); shift-corrected (a diagnostic) "
                    f"{_f(lv['generated_shift_corrected']['accuracy'])}.</p>")
        figs = lv.get("figures", {})
        body.append("<p>" + " ".join(f'<img src="{e(figs[k])}" alt="{e(k)}" width="440">'
                                     for k in ("confusion_real", "confusion_generated") if k in figs) + "</p>")
        body.append("<ul>" + "".join(f'<li><a href="#{e(level)}-{e(slug(s))}">{e(s)}</a>: generated '
                                     f'{_f(gen["recall"].get(s))}, real {_f(real["recall"].get(s))}</li>'
                                     for s in lv["generated_styles"]) + "</ul>")
    if "blend" in report:
        b = report["blend"]
        body.append(f"<h2>Blend {e(b['a'])} / {e(b['b'])}</h2>")
        if b.get("png"):
            body.append(f'<p><img src="{e(b["png"])}" alt="blend curve" width="520"></p>')
        cells = [_piece_cell(p, 260) for p in b.get("listen", [])]
        if cells:
            body.append('<table class="pieces"><tr>' + "".join(cells) + "</tr></table>")
    for level, lv in report["levels"].items():
        body += [_style_section(level, s, lv) for s in lv["generated_styles"]]
    style = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;"
             "font-size:13px}.small{font-size:12px;color:#444}")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>DeepJ listening page</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = Path(out_dir) / PAGE
    path.write_text(page)
    return path


def report_markdown(report: dict) -> str:
    """fidelity.md: the numbers of the page as Markdown tables, with the figures linked."""
    lines = ["# Style fidelity", "",
             f"Checkpoint `{report['checkpoint']}` (step {report['step']}), shards `{report['data']}`. Windows and "
             f"generated pieces of {report['bars']} bars ({report['window_steps']} steps){_lead(report)}, pitches "
             f"[{report['pitch_range'][0]}, {report['pitch_range'][1]}); {report['num']} pieces per style, temperature "
             f"{report['temperature']}, seed {report['seed']}{_redraws(report)}. Real windows: "
             f"{report['real_windows']['train']} train "
             f"(transposed up to +-{report['train_transpose']} as in training) to fit the classifier, "
             f"{report['real_windows']['val']} held-out val windows for the ceiling. Evaluation took "
             f"{report['seconds']} s (before writing pieces, audio and figures).",
             "", "The classifier sees pitch, onset and duration features only (no volume), key-relative pitch "
             "classes, and the same range and window length for real and generated music (see deepj/fidelity.py).",
             ""]
    for level, lv in report["levels"].items():
        real, gen, shifted = lv["real_val"], lv["generated"], lv["generated_shift_corrected"]
        lines += [f"## {level} level ({len(lv['classes'])} classes, chance {lv['chance']:.3f})", "",
                  f"Held-out real windows: accuracy {_f3(real['accuracy'])}, balanced {_f3(real['balanced_accuracy'])}"
                  f" ({real['n']} windows). Generated pieces: accuracy **{_f3(gen['accuracy'])}** ({gen['n']} pieces; "
                  f"{lv['silent_generated_pieces']} silent). Diagnostic: {_f3(shifted['accuracy'])} after removing "
                  "the feature offset common to all generated pieces (shift-corrected; not the fidelity).", "",
                  "| style | train windows | real val: recall (windows) | generated: classified as requested | "
                  "mean P(style) asked for it | mean P(style) asked for others | shift-corrected |",
                  "|---|---|---|---|---|---|---|"]
        for c in lv["classes"]:
            done = c in lv["generated_styles"]
            lines.append(f"| {c} | {lv['train_windows'][c]} | {_f3(real['recall'][c])} ({real['support'][c]}) | "
                         f"{_f3(gen['recall'][c]) if done else 'not generated'} | {_f3(gen['mean_prob_true'][c])} | "
                         f"{_f3(gen['mean_prob_others'][c])} | {_f3(shifted['recall'][c]) if done else ''} |")
        figs = lv.get("figures", {})
        lines += ["", " ".join(f"![{k}]({v})" for k, v in figs.items()), ""]
        stat_keys = list(next(iter(lv["stats"].values()))["oa"]) if lv["stats"] else []
        lines += ["Overlapped area (OA) of generated vs held-out real, per statistic (1 = same distribution):", "",
                  "| style | " + " | ".join(stat_keys) + " |", "|---" * (len(stat_keys) + 1) + "|"]
        for c, st in lv["stats"].items():
            lines.append(f"| {c} | " + " | ".join(_f3(st["oa"][k]["oa"]) for k in stat_keys) + " |")
        lines.append("")
    if "blend" in report:
        b = report["blend"]
        lines += [f"## Blend w*{b['a']} + (1-w)*{b['b']} ({b['level']} classifier)", "",
                  f"| w | mean P({b['a']}) | mean P({b['b']}) | P({b['a']}) / (P({b['a']}) + P({b['b']})) | "
                  f"classified {b['a']} | classified {b['b']} |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['w']:.2f} | {r['p_a']:.3f} | {r['p_b']:.3f} | {r['p_a_of_ab']:.3f} | {r['frac_a']:.3f} | "
                  f"{r['frac_b']:.3f} |" for r in b["rows"]]
        lines += ["", f"![blend]({b.get('png', '')})", ""]
    lines += ["Listening page: [index.html](index.html).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepj.evaluation.listening",
                                description="Rebuild index.html from fidelity.json.")
    p.add_argument("eval_dir", help="the output folder of python -m deepj.fidelity (holding fidelity.json)")
    args = p.parse_args(argv)
    src = Path(args.eval_dir) / "fidelity.json"
    if not src.is_file():
        print(f"error: {src} not found: run python -m deepj.fidelity first", file=sys.stderr)
        return 2
    try:
        report = json.loads(src.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"error: {src} is not valid JSON ({e}): run python -m deepj.fidelity again", file=sys.stderr)
        return 2
    print(write_page(Path(args.eval_dir), report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
