"""The studio's page (Gradio): style sliders, settings, a primer, a morph, and a result slot per piece.

The page itself only lays out components and moves values between them and `Studio.run` (deepj/studio/jobs.py).
Generation runs in Gradio's queue, off the request thread, one job at a time: a second click waits its turn with its
queue position shown, and a full queue is refused with a message. Nothing is fetched from the network: analytics
are off and the theme names system fonts only (a theme's font may be a Google Font, fetched by the browser;
tests/test_studio_browser.py checks every request the page makes).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no calls home

import gradio as gr  # noqa: E402

from deepj.compose import MAX_BARS, MAX_PIECES, MAX_PRIMER_BARS, MAX_PRIMER_BYTES, RequestError  # noqa: E402
from deepj.music.styles import slug  # noqa: E402
from deepj.sampling import SampleConfig  # noqa: E402
from deepj.studio.jobs import (  # noqa: E402
    MAX_PAGE_SEED,
    MAX_SILENCE_REDRAWS,
    Form,
    Studio,
    find_styles,
    style_groups,
)

MAX_QUEUE = 16  # jobs waiting at once; one more is refused by Gradio with "queue is full"
MAX_UPLOAD_MB = MAX_PRIMER_BYTES // 2**20  # compose reads no larger primer; Gradio refuses the upload already
OPEN_BELOW = 9  # fewer leaf styles: composer lists open; more: collapsed, and a search box finds composers
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
.error-text { color: #b91c1c; font-weight: 600; }
"""


@dataclass
class StyleSliders:
    """A weight slider for every period and every composer under it ({style name: slider}), the composers of a
    period in an accordion of their own ({period: accordion}), collapsed where there are many."""

    sliders: dict[str, gr.Slider]
    accordions: dict[str, gr.Accordion]
    open: bool


def _style_sliders(studio: Studio, prefix: str, first: int) -> StyleSliders:
    """The slider of top-level name number `first` starts at 1, every other at 0."""
    out = StyleSliders({}, {}, open=studio.meta.styles.num_styles < OPEN_BELOW)
    for k, (top, leaves) in enumerate(style_groups(studio.meta.styles)):
        out.sliders[top] = gr.Slider(0, 1, value=1.0 if k == first else 0.0, step=0.05, label=top,
                                     elem_id=f"{prefix}-{slug(top)}")
        if not leaves:
            continue
        label = f"{top}: {len(leaves)} composer{'s' if len(leaves) > 1 else ''}"
        with gr.Accordion(label, open=out.open, elem_id=f"{prefix}-{slug(top)}-composers") as out.accordions[top]:
            for row in range(0, len(leaves), 3):
                with gr.Row():
                    for leaf in leaves[row:row + 3]:
                        out.sliders[leaf] = gr.Slider(0, 1, value=0.0, step=0.05, label=leaf.split("/", 1)[-1],
                                                      elem_id=f"{prefix}-{slug(leaf)}", min_width=120)
    return out


def _search_styles(studio: Studio, box: gr.Textbox, sets: list[StyleSliders]) -> None:
    """Typing in `box` shows only the composers it finds (their periods' lists opened); an empty box shows all."""
    tree = studio.meta.styles
    outputs = [c for ss in sets for c in (*(ss.sliders[leaf] for _, leaves in style_groups(tree) for leaf in leaves),
                                          *ss.accordions.values())]

    def search(query: str) -> list:
        shown = find_styles(tree, query)
        updates = []
        for ss in sets:
            updates += [gr.Slider(visible=shown[leaf]) for _, leaves in style_groups(tree) for leaf in leaves]
            updates += [gr.Accordion(open=any(shown[leaf] for leaf in leaves) if query.strip() else ss.open)
                        for _, leaves in style_groups(tree) if leaves]
        return updates

    # Off the queue: a search must not wait behind a generation.
    box.change(search, inputs=box, outputs=outputs, queue=False, show_progress="hidden")


def _pitch_range(studio: Studio) -> str:
    rep = studio.meta.representation
    return f"pitches {rep.min_pitch}-{rep.max_pitch - 1} (MIDI numbers)"


def _header(studio: Studio) -> str:
    meta = studio.meta
    audio = ("Each piece comes with a piano roll, an audio player and its MIDI file." if studio.audio else
             f"**No audio here**: {studio.audio_why}. Pieces come as piano roll and MIDI; install FluidSynth and a "
             "soundfont (`apt-get install fluidsynth fluid-soundfont-gm`) and restart the studio to hear them.")
    return (f"# DeepJ studio\n`{studio.checkpoint}` (step {meta.step}): {meta.styles.num_styles} styles, "
            f"{meta.representation.describe()}.  \n"
            f"A request may ask for at most **{MAX_BARS} bars** and **{MAX_PIECES} pieces**; a primer may be up to "
            f"**{MAX_PRIMER_BARS} bars** long (MIDI files up to {MAX_UPLOAD_MB} MB). One generation runs "
            f"at a time; further clicks wait in a queue of {MAX_QUEUE}, their place shown.  \n{audio}")


def build(studio: Studio) -> gr.Blocks:
    """The page for one loaded checkpoint."""
    with gr.Blocks(title="DeepJ studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as page:
        gr.Markdown(_header(studio), elem_id="header")
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("### Style\nWeights are normalised as `--style` normalises them (`bach=0.5` beside "
                            "`baroque=1` gives bach a third); at least one must be above zero. A period stands "
                            "for the average of its composers.")
                many = studio.meta.styles.num_styles >= OPEN_BELOW
                search = gr.Textbox(label="find a composer or period", visible=many, elem_id="search")
                weights = _style_sliders(studio, "w", first=0)
                with gr.Accordion("Morph to a second style", open=False, elem_id="morph"):
                    morph = gr.Checkbox(label="morph: the blend moves step by step, linearly, from the style above "
                                        "to this one over the bars below", elem_id="morph-on")
                    with gr.Row():
                        morph_from = gr.Number(1, label="from bar", precision=0, minimum=1, maximum=MAX_BARS,
                                               elem_id="morph-from")
                        morph_to = gr.Number(8, label="to bar", precision=0, minimum=1, maximum=MAX_BARS,
                                             elem_id="morph-to")
                    morph_weights = _style_sliders(studio, "m", first=min(1, len(style_groups(studio.meta.styles))
                                                                          - 1))
                _search_styles(studio, search, [weights, morph_weights])
            with gr.Column(scale=2):
                gr.Markdown("### Settings")
                bars = gr.Slider(1, MAX_BARS, value=32, step=1, label=f"bars (at most {MAX_BARS})", elem_id="bars")
                pieces = gr.Slider(1, MAX_PIECES, value=1, step=1, label=f"pieces (at most {MAX_PIECES}), "
                                   "generated together", elem_id="pieces")
                temperature = gr.Number(1.0, label="temperature (> 0; higher is wilder)", minimum=0.01, step=0.1,
                                        elem_id="temperature")
                seed = gr.Number(0, label="seed", precision=0, minimum=0, maximum=MAX_PAGE_SEED, elem_id="seed")
                redraws = gr.Slider(0, MAX_SILENCE_REDRAWS, value=SampleConfig.silence_redraws, step=1,
                                    label="silence redraws (a step that would begin a silence is redrawn up to this "
                                    "many times; 0 = the paper's sampler)", elem_id="redraws")
                gr.Markdown("### Continue my music\nUpload a MIDI file: the model reads it (its last bars, or all "
                            "of it) and continues it in the chosen style. Its notes are kept as the model's grid "
                            f"keeps them: {_pitch_range(studio)}, on 16th notes.")
                primer = gr.File(label="primer (MIDI)", type="filepath", elem_id="primer", height=120)
                with gr.Row():
                    primer_all = gr.Checkbox(label="read all of it", elem_id="primer-all")
                    primer_bars = gr.Number(8, label=f"else its last bars (1-{MAX_PRIMER_BARS})", precision=0,
                                            minimum=1, maximum=MAX_PRIMER_BARS, elem_id="primer-bars")
                continuation_only = gr.Checkbox(label="result holds only the continuation", elem_id="cont-only")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status", min_height=40)
        slots = []
        for i in range(MAX_PIECES):
            with gr.Column(visible=False, variant="panel", elem_id=f"piece-{i + 1}") as group:
                caption = gr.Markdown(elem_id=f"caption-{i + 1}")
                image = gr.Image(type="filepath", format="png", show_label=False, buttons=["download"],
                                 interactive=False, elem_id=f"roll-{i + 1}")
                audio = gr.Audio(type="filepath", label="listen", interactive=False, visible=studio.audio,
                                 buttons=["download"], elem_id=f"audio-{i + 1}")
                midi = gr.File(label="MIDI", interactive=False, elem_id=f"midi-{i + 1}")
            slots.append((group, caption, image, audio, midi))

        def generate(data: dict, progress=gr.Progress()) -> dict:  # noqa: B008 (how Gradio passes a tracker)
            """Gradio's queue calls this in a worker thread, one job at a time."""
            form = Form(weights={n: data[s] for n, s in weights.sliders.items()}, bars=data[bars], pieces=data[pieces],
                        temperature=data[temperature], seed=data[seed], silence_redraws=data[redraws],
                        primer=data[primer], primer_all=data[primer_all], primer_bars=data[primer_bars],
                        continuation_only=data[continuation_only], morph=data[morph],
                        morph_weights={n: data[s] for n, s in morph_weights.sliders.items()},
                        morph_from=data[morph_from], morph_to=data[morph_to])
            progress(0, desc="starting")
            try:
                result = studio.run(form, lambda done, total: progress((done, total), desc="generating",
                                                                        unit="steps"))
            except RequestError as e:  # the request, not the server: say what is wrong and keep what is shown
                message = str(e)
                if form.primer:  # the upload's temporary path means nothing to the user; its name does
                    message = message.replace(str(form.primer), Path(form.primer).name)
                return {status: f'<p class="error-text">Not generated: {html.escape(message)}</p>'}
            out = {status: result.summary}
            for i, (group, caption, image, audio, midi) in enumerate(slots):
                shown = i < len(result.pieces)
                out[group] = gr.Column(visible=shown)
                if shown:
                    p = result.pieces[i]
                    out.update({caption: p.caption, image: str(p.png), midi: str(p.midi)})
                    if studio.audio:
                        out[audio] = str(p.wav)
            return out

        inputs = {*weights.sliders.values(), *morph_weights.sliders.values(), bars, pieces, temperature, seed, redraws,
                  primer, primer_all, primer_bars, continuation_only, morph, morph_from, morph_to}
        outputs = [status] + [c for slot in slots for c in slot]
        # "multiple": every click becomes a job of its own in the queue (Gradio's default drops clicks made while
        # one is pending); concurrency_limit=1: jobs run one after another, each shown its place meanwhile.
        button.click(generate, inputs=inputs, outputs=outputs, concurrency_limit=1, trigger_mode="multiple",
                     show_progress_on=[status], api_name="generate")
    page.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)
    return page


def launch(page: gr.Blocks, studio: Studio, host: str, port: int) -> None:
    """Serve the page until Ctrl-C; the URL is printed once the server listens."""
    _, url, _ = page.launch(server_name=host, server_port=port, theme=THEME, css=CSS, footer_links=[],
                            allowed_paths=[str(studio.out_dir)], max_file_size=f"{MAX_UPLOAD_MB}mb", quiet=True,
                            prevent_thread_lock=True, ssr_mode=False, show_error=True)
    print(f"DeepJ studio: {url}  (Ctrl-C to stop)", flush=True)
    page.block_thread()
