"""launchers/train.slurm on an emulated 2-node allocation: stand-in `srun` and `scontrol` on PATH.

The stand-in srun runs the task once per node (SLURM_NODEID 0 and 1) in parallel and, like
`--kill-on-bad-exit`, kills the others when one fails; the stand-in scontrol expands the node
list to two names of this machine and records requeue requests. Each "node" runs its own
DeepSpeed launcher (--no_ssh --node_rank i), so the run is 2 nodes × 1 rank of ZeRO-3 with
LoRA adapters, merged at export.

The test then plays Slurm's pre-timeout signal: SIGUSR1 to every process of the job step. The
launchers ignore it, the ranks checkpoint and exit 0, the script sees the stage unfinished and
requeues the job; the requeued job resumes from that checkpoint and finishes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from t2t.config import load_config
from t2t.train import stage_complete
from t2t.train.engine import free_port
from train_support import REPO, metrics, rank_env, write_recipe, write_stage_shards

SRUN = r"""#!/usr/bin/env bash
# stand-in for srun: one task per emulated node, in parallel; --kill-on-bad-exit kills the rest on a failure
echo "$@" >> "$EMU_DIR/srun.args"
kill_on_bad_exit=0
while [[ $1 == -* ]]; do [[ $1 == --kill-on-bad-exit* ]] && kill_on_bad_exit=1; shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" > "$EMU_DIR/node$i.log" 2>&1 &
    pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
    if ! wait -n; then
        status=1
        [[ $kill_on_bad_exit == 1 ]] && kill "${pids[@]}" 2>/dev/null
    fi
done
exit $status
"""

SCONTROL = r"""#!/usr/bin/env bash
# stand-in for scontrol: `show hostnames` gives two names of this machine; `requeue` is recorded
case $1 in
    show) printf '%s\n' $EMU_HOSTS ;;
    requeue) echo "$@" >> "$EMU_DIR/requeue" ;;
    *) echo "scontrol stand-in: unsupported $*" >&2; exit 1 ;;
esac
"""


def start_job(script_args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO / "launchers" / "train.slurm"), *script_args], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def signal_the_step(job: subprocess.Popen, srun: Path, sig: int) -> int:
    """What Slurm's --signal=USR1@T does: signal every process of the job step (srun's tasks), not srun itself."""
    steps = [p for p in psutil.Process(job.pid).children(recursive=True) if str(srun) in " ".join(p.cmdline())]
    assert len(steps) == 1, steps
    tasks = steps[0].children(recursive=True)
    for p in tasks:
        p.send_signal(sig)
    return len(tasks)


@pytest.mark.slow
def test_train_slurm_two_nodes_stop_on_usr1_requeue_and_resume(tiny_model_dir, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=2, per_shard=16)
    steps = 12
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "shards", tmp_path / "run",
                          lora={"r": 4, "alpha": 8}, save_every=4, stage1=dict(steps=steps, lr=1.0e-2))
    recipe.write_text(recipe.read_text().replace("loader_workers: 0", "loader_workers: 1"))  # they get USR1 too
    env = rank_env(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="emu[1-2]", SLURM_NNODES="2", GPUS_PER_NODE="1",
                   EMU_HOSTS="localhost 127.0.0.1", EMU_DIR=str(tmp_path), MASTER_PORT=str(free_port()))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    stage = tmp_path / "run" / "stage1"

    # Job 1: the time limit approaches after the first step; Slurm signals the step's processes.
    with (tmp_path / "job1.log").open("w") as log:
        job = start_job([str(recipe), "stage1"], env, log)
        deadline = time.time() + 240
        while not ((stage / "metrics.jsonl").exists() and (stage / "metrics.jsonl").read_text().strip()):
            assert job.poll() is None and time.time() < deadline, (tmp_path / "job1.log").read_text()
            time.sleep(0.05)
        # per node: the launcher, launch.py, the rank and its loader process
        assert signal_the_step(job, bin_dir / "srun", signal.SIGUSR1) >= 8
        code = job.wait(timeout=180)
    out = (tmp_path / "job1.log").read_text()
    node_logs = "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("node*.log")))
    assert code == 0, out + node_logs
    assert "requeueing" in out and (tmp_path / "requeue").read_text().split() == ["requeue", "4242"]
    stopped_at = len(metrics(tmp_path / "run"))
    assert 1 <= stopped_at < steps and (stage / "checkpoints" / f"step{stopped_at:08d}").is_dir()
    assert "--kill-on-bad-exit=1" in (tmp_path / "srun.args").read_text()
    hostfile = tmp_path / "run" / "slurm" / "4242" / "hostfile"
    assert hostfile.read_text().split("\n")[:2] == ["localhost slots=1", "127.0.0.1 slots=1"]
    for node in (0, 1):
        assert f"node_rank={node}" in (tmp_path / f"node{node}.log").read_text()

    # Job 2: the requeued job resumes from that checkpoint and finishes.
    (tmp_path / "requeue").unlink()
    with (tmp_path / "job2.log").open("w") as log:
        # the stage by its number this time: the recipe's first, stage1
        assert start_job([str(recipe), "1"], env, log).wait(timeout=300) == 0, (tmp_path / "job2.log").read_text()
    assert f"t2t train stage1: finished; model in {stage / 'model'}" in (tmp_path / "job2.log").read_text()
    assert not (tmp_path / "requeue").exists()
    assert "resumed from" in (tmp_path / "node0.log").read_text()
    assert [m["step"] for m in metrics(tmp_path / "run")] == list(range(1, steps + 1))
    for ckpt in sorted((stage / "checkpoints").glob("step*")):
        assert len(list(ckpt.glob("*optim_states.pt"))) == 2  # one ZeRO-3 partition per rank

    assert stage_complete(load_config(recipe), "stage1")
    assert json.loads((stage / "model" / "t2t_train.json").read_text())["lora"] is True
    merged = load_file(stage / "model" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora" in k for k in merged) and merged.keys() == base.keys()
    changed = [k for k in base if not (merged[k] == base[k]).all()]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only the adapted layers moved


def test_train_slurm_asks_for_the_pre_timeout_signal_and_requeue():
    script = (REPO / "launchers" / "train.slurm").read_text()
    assert "#SBATCH --signal=USR1@" in script and "#SBATCH --requeue" in script
    assert "trap \"\" USR1" in script and "scontrol requeue" in script
