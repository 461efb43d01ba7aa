"""Is a run finished? The run folder alone answers: its resolved config (written by deepj.train at start) gives
train.max_steps, its newest complete checkpoint gives the step reached.

slurm/train.sbatch asks this after a stop was requested, instead of trusting the step's exit status: torchrun turns
a worker's PREEMPTED_EXIT (75) into its own 1 (a failed worker group), and a signal can also arrive just as the
last step finishes.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from deepj.training import checkpoint

FINISHED, UNFINISHED, NOT_A_RUN = 0, 1, 2  # exit statuses of `python -m deepj.launch status`


@dataclass
class RunStatus:
    run_dir: Path
    max_steps: int | None  # None when the run never wrote its config (it did not get as far as starting)
    step: int  # of the newest complete checkpoint; 0 when there is none
    checkpoint: Path | None

    @property
    def finished(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

    def line(self) -> str:
        if self.max_steps is None:
            return f"{self.run_dir}: no config.toml (training has not started there)"
        where = f"newest complete checkpoint {self.checkpoint.name}" if self.checkpoint else "no complete checkpoint"
        state = "finished" if self.finished else "unfinished"
        return f"{self.run_dir}: {state}, step {self.step} of {self.max_steps} ({where})"

    @property
    def exit_code(self) -> int:
        if self.max_steps is None:
            return NOT_A_RUN
        return FINISHED if self.finished else UNFINISHED


def run_status(run_dir: str | Path) -> RunStatus:
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    max_steps = None
    if cfg_path.is_file():
        try:
            max_steps = int(tomllib.loads(cfg_path.read_text())["train"]["max_steps"])
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{cfg_path}: no readable train.max_steps ({type(e).__name__}: {e})") from None
    latest, _skipped = checkpoint.find_latest(run_dir)
    step = int(checkpoint.STEP_RE.match(latest.name).group(1)) if latest is not None else 0
    return RunStatus(run_dir, max_steps, step, latest)
