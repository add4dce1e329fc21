"""Running inside SLURM without torchrun: ``srun --ntasks-per-node=G prunecli train ...``
starts one process per GPU, and each must learn its rank, the world size and where rank 0
listens from SLURM's environment, as torchrun would have told it. With torchrun (``RANK`` set)
nothing here changes anything."""

from __future__ import annotations

import os
import re
from datetime import datetime

_MIN_PORT, _PORT_SPAN = 20000, 40000


def slurm_tasks() -> int:
    """Tasks of this SLURM job step (``srun``), 0 outside a step. The batch script itself also
    sees ``SLURM_NTASKS`` and ``SLURM_PROCID=0``, but is one process: only a step counts."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "0") or 0)


def adopt_slurm_environment(environ: dict[str, str] | None = None) -> bool:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from a
    multi-task SLURM step (before Hydra composes the config: the output folder and the
    rank-0-only files depend on them). Returns whether it did."""
    env = os.environ if environ is None else environ
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "0") or 0)
    if "RANK" in env or tasks <= 1 or "SLURM_PROCID" not in env:
        return False
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1)
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(tasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["LOCAL_WORLD_SIZE"] = str(max(1, tasks // max(1, nodes)))
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    env.setdefault("MASTER_ADDR", first_host(nodelist))
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    env.setdefault("MASTER_PORT", str(_MIN_PORT + job % _PORT_SPAN))  # same on every task
    return True


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,9],cpu1`` -> ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        return "localhost"
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges, maxsplit=1)[0]


def run_id(time_format: str) -> str:
    """The id of a run's output folder, the same in every process of one run: torchrun's run
    id, else ``slurm<job>.<step>`` in a multi-task SLURM step (stable when the job is
    requeued), else the time (``time_format``, as Hydra's ``now``)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return os.environ["TORCHELASTIC_RUN_ID"]
    if slurm_tasks() > 1 and os.environ.get("SLURM_JOB_ID"):
        return f"slurm{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return datetime.now().strftime(time_format)
