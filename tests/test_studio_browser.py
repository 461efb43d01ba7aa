"""The studio in a real browser: `python -m deepj.studio` on a free local port, driven by Debian's chromium through
playwright (pointed at the system browser; nothing is downloaded). Skipped where chromium or playwright is absent
(`make test` installs both where it can, as root).

One walk through the page: move a slider, upload a file that is not MIDI (a message; the server goes on), upload a
real primer, click Generate twice (the second click is queued, not lost), wait for the audio and the MIDI link,
download the MIDI and check that it begins with the primer's notes as the grid keeps them and goes on with new ones.
Every request the page makes must go to the studio itself. A screenshot of the page is saved in the test's folder and,
where $DEEPJ_ARTIFACTS names a folder, there too.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pretty_midi
import pytest
from conftest import REPO

from deepj.music.midi_io import read_midi
from deepj.music.render import audio_available
from deepj.music.representation import ReprConfig

CHROMIUM = os.environ.get("DEEPJ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install "
                                "chromium; make test installs it as root)")
START_TIMEOUT = 60  # s: torch, gradio and the model load before the URL is printed
GENERATE_TIMEOUT = 60_000  # ms: two queued jobs of 2 bars on the tiny model take seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_primer(path: Path) -> None:
    """Two bars at 100 bpm (the grid is beat-relative: 16th notes whatever the tempo): a melody and chords in the
    model's range, one note above it (C7: dropped by the grid) and a drum track (dropped: never a pitch)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=100.0)
    step = 60.0 / 100.0 / 4
    piano, drums = pretty_midi.Instrument(program=0), pretty_midi.Instrument(program=0, is_drum=True)
    melody = [60, 62, 64, 65, 67, 69, 71, 72]
    for k, pitch in enumerate(melody):  # quarter notes over the two bars, played a little early or late
        late = 0.02 * (-1) ** k  # s: under half a step (0.075 s), so each lands on its 16th
        piano.notes.append(pretty_midi.Note(90, pitch, 4 * k * step + max(late, 0), 4 * (k + 1) * step + late))
    for bar, root in enumerate((48, 43)):  # a whole-bar chord per bar
        for pitch in (root, root + 4, root + 7):
            piano.notes.append(pretty_midi.Note(70, pitch, 16 * bar * step, 16 * (bar + 1) * step))
    piano.notes.append(pretty_midi.Note(80, 96, 0, 4 * step))  # C7: above the model's range
    drums.notes.append(pretty_midi.Note(100, 36, 0, 2 * step))
    pm.instruments += [piano, drums]
    pm.write(str(path))


class Studio:
    """`python -m deepj.studio RUN --port P` in a child process, its output read by a thread (a full pipe would
    stall the server)."""

    def __init__(self, run: Path, port: int):
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "deepj.studio", str(run), "--port", str(port)], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "the studio exited:\n" + "".join(self.log)
                continue
            found = re.search(r"DeepJ studio: (http://\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError(f"no URL printed within {START_TIMEOUT} s:\n" + "".join(self.log))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def onsets(notes) -> list[tuple[int, int, int]]:
    """Grid notes -> sorted (pitch, start, velocity)."""
    return sorted(zip(notes["pitch"].tolist(), notes["start"].tolist(), notes["velocity"].tolist()))


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_studio_in_chromium(trained_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e "
                                   "'.[test]')")
    primer = tmp_path / "primer.mid"
    write_primer(primer)
    rep = ReprConfig()  # the tiny corpus's range, C2..B5
    want = read_midi(primer, rep)
    assert set(want["pitch"]) == {60, 62, 64, 65, 67, 69, 71, 72, 48, 52, 55, 43, 47, 50}  # no C7, no drum
    assert int(want["end"].max()) == 32
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("C D E F G\n")

    port = free_port()
    studio = Studio(trained_run, port)
    requests: list[str] = []
    try:
        url = studio.url()
        assert urlparse(url).port == port
        with sync_api.sync_playwright() as pw:
            # As root chromium needs --no-sandbox; a container's small /dev/shm would crash its renderer.
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            page.wait_for_selector("#generate")

            # Move sliders: baroque (1 by default) to 0, bach to 0.6 and mozart to 0.2 -> bach 75%, mozart 25%.
            page.locator("#w-baroque input[type=range]").fill("0")
            page.locator("#w-baroque-bach input[type=range]").fill("0.6")
            set_number(page, "w-classical-mozart", 0.2)
            set_number(page, "bars", 2)

            # A file that is not MIDI: the page says so, and the server goes on to the next request.
            page.locator("#primer input[type=file]").set_input_files(str(not_midi))
            page.click("#generate")
            error = page.wait_for_selector("#status .error-text", timeout=GENERATE_TIMEOUT)
            assert "MIDI" in error.inner_text() and "notes.mid" in error.inner_text()

            page.locator("#primer button[aria-label=Clear]").click()
            page.locator("#primer input[type=file]").set_input_files(str(primer))
            page.locator("#primer-all input[type=checkbox]").check()
            page.wait_for_timeout(300)  # the upload lands before the click reads it
            page.click("#generate")
            page.click("#generate")  # while the first runs: queued as a job of its own
            page.wait_for_function("document.querySelector('#status').innerText.includes('Request #3')",
                                   timeout=GENERATE_TIMEOUT)
            status = page.locator("#status").inner_text()
            assert "baroque/bach 75%" in status and "classical/mozart 25%" in status, status

            link = page.wait_for_selector("#midi-1 a[href]", timeout=GENERATE_TIMEOUT)
            with page.expect_download() as download:  # the MIDI link, clicked as a user clicks it
                link.click()
            got = tmp_path / "got.mid"
            download.value.save_as(got)
            if audio_available()[0]:
                page.wait_for_selector("#audio-1 audio", state="attached", timeout=GENERATE_TIMEOUT)
                wav = page.wait_for_selector("#audio-1 a[download][href]", state="attached")
                assert urllib.request.urlopen(wav.get_attribute("href"), timeout=10).read(4) == b"RIFF"
            else:
                assert "No audio here" in page.locator("#header").inner_text()
            assert "primer" in page.locator("#caption-1").inner_text()
            page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
            browser.close()

        pretty_midi.PrettyMIDI(str(got))  # parses: a valid file
        out = read_midi(got, rep)
        primer_steps = int(want["end"].max())  # a primer ends where its last note ends
        head, tail = out[out["start"] < primer_steps], out[out["start"] >= primer_steps]
        assert onsets(head) == onsets(want), "the piece does not begin with the primer's notes"
        # A primer note may be held on by the model's first step (same pitch, no re-strike); no other may change.
        ends = dict(zip(zip(want["pitch"].tolist(), want["start"].tolist()), want["end"].tolist()))
        for n in head:
            end = ends[(int(n["pitch"]), int(n["start"]))]
            assert int(n["end"]) == end or end == primer_steps
        assert len(tail) > 0, "no new notes after the primer"
        assert int(out["end"].max()) <= primer_steps + 2 * 16
    finally:
        studio.stop()
        shot = tmp_path / "studio.png"
        if shot.is_file() and os.environ.get("DEEPJ_ARTIFACTS"):
            Path(os.environ["DEEPJ_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["DEEPJ_ARTIFACTS"]) / "studio.png")
    hosts = {urlparse(u).netloc for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {f"127.0.0.1:{port}"}, f"the page fetched from elsewhere: {sorted(hosts)}"
    assert all(urlparse(u).scheme in ("http", "ws", "blob", "data") for u in requests)
