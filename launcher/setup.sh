#!/usr/bin/env bash
# Set up deepj in the current Python environment: `bash launcher/setup.sh [python] [test]`.
# Keeps a torch that is already installed; otherwise picks the CPU build where no NVIDIA GPU is found, so a laptop or
# CI machine does not pull several GB of CUDA wheels. Installs FluidSynth for audio where apt is available as root,
# and with `test` Debian's chromium, which the studio's browser test drives.
set -euo pipefail
PY=${1:-python3}
EXTRA=${2:-}
cd "$(dirname "$0")/.."

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
  "$PY" -m pip install torch
else
  echo "setup: no GPU found, installing the CPU build of torch"
  # A local wheel folder (pip's find-links) may already hold the CPU build: take it without looking at any index
  # (an index would offer PyPI's CUDA build), then its dependencies from the configured indexes. Otherwise use
  # PyTorch's CPU index.
  if "$PY" -m pip install -q --no-index --no-deps torch==2.13.0 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
  else
    "$PY" -m pip install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

if [ "$EXTRA" = test ]; then
  "$PY" -m pip install -q -e ".[test,deepspeed,studio]"
else
  "$PY" -m pip install -q -e ".[studio]"
fi

# System packages (optional), where apt is available as root: FluidSynth and a General MIDI soundfont for audio; for
# the tests, Debian's chromium (tests/test_studio_browser.py drives it with playwright; no browser is downloaded).
# Each is installed on its own, so one that fails leaves the other.
need_audio=""
command -v fluidsynth >/dev/null 2>&1 || need_audio=yes
need_browser=""
if [ "$EXTRA" = test ] && ! command -v chromium >/dev/null 2>&1; then need_browser=yes; fi
if [ -n "$need_audio$need_browser" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq || echo "setup: apt-get update failed; trying the package lists there are"
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
  if [ -n "$need_audio" ]; then
    echo "setup: installing fluidsynth and a General MIDI soundfont (for WAV output)"
    apt_install fluidsynth fluid-soundfont-gm || echo "setup: could not install fluidsynth"
  fi
  if [ -n "$need_browser" ]; then
    echo "setup: installing chromium (for the studio's browser test)"
    apt_install chromium || echo "setup: could not install chromium"
  fi
fi
if ! command -v fluidsynth >/dev/null 2>&1; then
  echo "setup: fluidsynth not found; samples will be MIDI and PNG only (apt-get install fluidsynth fluid-soundfont-gm)"
fi
if [ "$EXTRA" = test ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: chromium not found; the studio's browser test will be skipped (apt-get install chromium)"
fi
echo "setup: done"
