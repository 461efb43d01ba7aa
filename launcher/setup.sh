#!/usr/bin/env bash
# Set up deepj in the current Python environment: `bash launcher/setup.sh [python] [test]`.
# Keeps a torch that is already installed; otherwise picks the CPU build where no NVIDIA GPU is found, so a laptop or
# CI machine does not pull several GB of CUDA wheels. Installs FluidSynth for audio where apt is available as root.
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
  "$PY" -m pip install -q -e ".[test,deepspeed]"
else
  "$PY" -m pip install -q -e .
fi

# Audio rendering (optional): FluidSynth and a General MIDI soundfont.
if ! command -v fluidsynth >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing fluidsynth and a General MIDI soundfont (for WAV output)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm >/dev/null) \
      || echo "setup: could not install fluidsynth; samples will be MIDI and PNG only"
  else
    echo "setup: fluidsynth not found; samples will be MIDI and PNG only (apt-get install fluidsynth fluid-soundfont-gm)"
  fi
fi
echo "setup: done"
