#!/usr/bin/env bash
# torchrun for deepj.train on THIS node: `bash launcher/torchrun.sh [--config X] [key=value ...]`.
#
# One node (the default): --standalone. Several nodes: run it on every node with the same DEEPJ_RDZV_HOST/PORT
# (slurm/train.sbatch does, one srun task per node); the nodes meet in torchrun's c10d rendezvous on that host.
#
# Environment (all optional):
#   DEEPJ_NNODES          nodes                      (default: SLURM_NNODES, else 1)
#   DEEPJ_NPROC_PER_NODE  processes on this node     (default: SLURM_GPUS_ON_NODE, else the GPUs nvidia-smi lists,
#                                                     else 1)
#   DEEPJ_RDZV_HOST/PORT  c10d rendezvous endpoint   (needed for several nodes; PORT default 29500)
#   DEEPJ_RDZV_ID         rendezvous id              (default: SLURM_JOB_ID, else deepj)
#   DEEPJ_PYTHON          the Python with deepj      (default: python3)
#   DEEPJ_IGNORE_USR2=1   torchrun ignores SIGUSR2 (set by slurm/train.sbatch). torchrun forwards only TERM, INT,
#                         HUP and QUIT to its workers and dies on an unhandled USR1/USR2 (pytorch #154849). Slurm
#                         delivers a step signal to every process of the step, so the workers get USR2 directly,
#                         save at the same step (deepj/training/preempt.py) and exit 75; torchrun just sees them finish, with
#                         no 30-second kill timer (pytorch #119856) running against the checkpoint write. An ignored
#                         signal stays ignored across exec, and each worker installs its own USR2 handler. Without
#                         it a USR2 kills torchrun; its workers see their parent gone at the next step, save that
#                         step and exit 75 (deepj/training/preempt.py), as they do when torchrun is SIGKILLed.
# torchrun reports a worker's exit 75 (and 2: bad input, 3: a non-finite loss) as its own exit 1 (a failed worker
# group); callers that need to know whether the run finished ask `python -m deepj.launch status RUN_DIR`.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"  # nnodes, nproc, py

args=(--nnodes="$nnodes" --nproc-per-node="$nproc")
if [ "$nnodes" -eq 1 ] && [ -z "${DEEPJ_RDZV_HOST:-}" ]; then
  args+=(--standalone)
else
  if [ -z "${DEEPJ_RDZV_HOST:-}" ]; then
    echo "launcher/torchrun.sh: $nnodes nodes need DEEPJ_RDZV_HOST (the node that hosts the rendezvous)" >&2
    exit 2
  fi
  args+=(--rdzv-backend=c10d --rdzv-endpoint="${DEEPJ_RDZV_HOST}:${DEEPJ_RDZV_PORT:-29500}"
         --rdzv-id="${DEEPJ_RDZV_ID:-${SLURM_JOB_ID:-deepj}}")
fi

echo "launcher/torchrun.sh on $(hostname): ${args[*]} -m deepj.train $*" >&2
if [ "${DEEPJ_IGNORE_USR2:-0}" = 1 ]; then
  trap '' USR2
fi
exec "$py" -m torch.distributed.run "${args[@]}" -m deepj.train "$@"
