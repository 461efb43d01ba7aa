#!/usr/bin/env bash
# The DeepSpeed launcher for deepj.train on THIS node: `bash launcher/deepspeed.sh [--config X] [key=value ...]`.
#
# One node: `deepspeed --num_gpus N` without a hostfile (given one, even naming only localhost, the launcher insists
# on ssh). Several nodes under Slurm (slurm/train_deepspeed.sbatch runs this once per node): each node starts its own
# launcher with --no_ssh --node_rank=$SLURM_NODEID and a hostfile written from SLURM_JOB_NODELIST, so neither ssh nor
# pdsh is needed. Several nodes without Slurm: DEEPJ_HOSTFILE=FILE (see launcher/hostfile.example), and this node's
# launcher starts all of them over pdsh/ssh.
#
# Environment (all optional): DEEPJ_NNODES (default SLURM_NNODES or 1), DEEPJ_NPROC_PER_NODE (default
# SLURM_GPUS_ON_NODE, the GPUs nvidia-smi lists, or 1), DEEPJ_RDZV_HOST / DEEPJ_RDZV_PORT (master address and port;
# port default 29500), DEEPJ_HOSTFILE, DEEPJ_PYTHON (default python3), DS_ACCELERATOR=cpu (CPU processes),
# DEEPJ_IGNORE_USR2=1 (set by the sbatch scripts: the launcher processes ignore USR2, which Slurm delivers to every
# process of the step; the workers handle it, save together and exit 75, and DeepSpeed's launcher passes 75 on).
# `--no_local_rank`: deepj.train reads LOCAL_RANK from the environment. train.backend=deepspeed is added unless given.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"  # nnodes, nproc, py
port=${DEEPJ_RDZV_PORT:-29500}

args=()
if [ "$nnodes" -eq 1 ] && [ -z "${DEEPJ_HOSTFILE:-}" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ -z "${DEEPJ_NPROC_PER_NODE:-}" ] && [ "${DS_ACCELERATOR:-}" != cpu ]; then
    # The GPUs Slurm (or the user) gave us: --num_gpus would drop CUDA_VISIBLE_DEVICES and take GPUs 0..N-1.
    args+=(--include="localhost:${CUDA_VISIBLE_DEVICES}" --master_port="$port")
  else
    args+=(--num_gpus="$nproc" --master_port="$port")
  fi
elif [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${DEEPJ_HOSTFILE:-}" ]; then
  hostfile="${TMPDIR:-/tmp}/deepj-hostfile.${SLURM_JOB_ID}.${SLURM_NODEID:-0}"
  # Slots 0..N-1 on every node: DeepSpeed's launcher sets CUDA_VISIBLE_DEVICES from them, which is right where
  # Slurm confines a job to its GPUs (ConstrainDevices=yes: they appear as 0..N-1), the usual set-up.
  scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n "$nnodes" | sed "s/\$/ slots=$nproc/" > "$hostfile"
  master=${DEEPJ_RDZV_HOST:-$(head -n1 "$hostfile" | cut -d' ' -f1)}
  args+=(--hostfile="$hostfile" --no_ssh --node_rank="${SLURM_NODEID:?SLURM_NODEID is not set}"
         --num_nodes="$nnodes" --num_gpus="$nproc" --master_addr="$master" --master_port="$port")
else
  if [ -z "${DEEPJ_HOSTFILE:-}" ]; then
    echo "launcher/deepspeed.sh: $nnodes nodes without Slurm need DEEPJ_HOSTFILE (see launcher/hostfile.example)" >&2
    exit 2
  fi
  master=${DEEPJ_RDZV_HOST:-$(grep -v '^\s*#' "$DEEPJ_HOSTFILE" | awk 'NF {print $1; exit}')}
  args+=(--hostfile="$DEEPJ_HOSTFILE" --num_nodes="$nnodes" --num_gpus="$nproc" --master_addr="$master"
         --master_port="$port")
fi

train_args=("$@")
case " $* " in
  *" train.backend="*) ;;
  *) train_args+=(train.backend=deepspeed) ;;
esac

echo "launcher/deepspeed.sh on $(hostname): ${args[*]} --no_local_rank --module deepj.train ${train_args[*]}" >&2
if [ "${DEEPJ_IGNORE_USR2:-0}" = 1 ]; then
  trap '' USR2
fi
exec "$py" -m deepspeed.launcher.runner "${args[@]}" --no_local_rank --module deepj.train "${train_args[@]}"
