"""t2t's launchers on a real two-node cluster (tests/cluster: two network namespaces, each a node with its own
address and host name, with slurmd and then Ray on each), not on stand-ins: what a job really gets from Slurm and
from Ray.

The cluster is started once for this file; a machine without Slurm or root fails here with what is missing (the
CI installs Slurm itself: .ci/run). The Ray tests come last: the last one kills node2."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from cluster.cluster import NODES, Cluster
from train_support import REPO, rank_env


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def job_fields(cluster: Cluster, job: str) -> dict[str, str]:
    """`scontrol show job`'s fields of `job` (Slurm keeps a finished job for MinJobAge seconds)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=cluster.env, capture_output=True, text=True,
                         check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


# The states of a job that has ended. A live one shows more than PENDING and RUNNING: scontrol prints a flag in
# their place while it holds (SIGNALING while the pre-timeout signal goes out, REQUEUED, CONFIGURING, COMPLETING...).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
         "PREEMPTED", "SPECIAL_EXIT"}


def wait_for(cluster: Cluster, job: str, states: set[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        fields = job_fields(cluster, job)
        if fields["JobState"] in states:
            return fields
        assert time.monotonic() < deadline, f"job {job} still {fields['JobState']} after {timeout:.0f} s: {fields}"
        time.sleep(0.5)


def test_each_node_has_its_own_address_and_reaches_the_other_by_name(slurm):
    """What DeepSpeed's rendezvous across hosts needs: a task per node, each on its own address, and the other
    node's name resolving to that node's address."""
    probe = "echo $SLURMD_NODENAME $(ip -4 -o addr show eth0 | grep -o '10[.0-9]*/' | tr -d /) " \
            "$(getent hosts node1 | cut -d' ' -f1) $(getent hosts node2 | cut -d' ' -f1)"
    done = subprocess.run(["srun", "--nodes=2", "--ntasks-per-node=1", "bash", "-c", probe], env=slurm.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = sorted(line.split() for line in done.stdout.splitlines())
    assert seen == [[node, addr, NODES["node1"], NODES["node2"]] for node, addr in NODES.items()]


def test_a_job_whose_recipe_fails_validation_says_why_first_and_exits_2(slurm, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: {path: m}\nstages: [{name: stage1, steps: 3, lr: -1.0}]\n")
    out = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1",
                                f"--output={out}", f"--chdir={REPO}", str(REPO / "launchers" / "train.slurm"),
                                str(recipe), "stage1"], env=rank_env(**slurm.env_overrides), capture_output=True,
                               text=True, check=True)
    job = submitted.stdout.strip().split(";")[0]
    fields = wait_for(slurm, job, {"FAILED", "COMPLETED"}, timeout=120)
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "2:0", fields
    first = out.read_text().splitlines()[0]
    assert first.startswith("train.slurm: error: ") and "stages.stage1" in first and "lr" in first, out.read_text()


@pytest.mark.slow
def test_a_stage_stopped_by_slurms_signal_and_by_a_dead_node_resumes_with_the_losses_of_one_uninterrupted_run(
        slurm, tiny_model_dir, tmp_path):
    """launchers/train.slurm as Slurm runs it: 2 nodes x 1 rank of a LoRA ZeRO-3 stage, DeepSpeed's rendezvous
    across the two addresses (the hostfile by node name).

    1. The time limit (2 min) brings Slurm's own SIGUSR1 (`--signal=USR1@60`; Slurm looks every 30 s and sends it
       up to that much early, so 30-60 s into the run) mid-stage: the ranks checkpoint and exit 0, and the job
       requeues itself. While it waits, the stage is cut to 24 steps past that checkpoint (`steps` never stops a
       checkpoint from resuming), to checkpoint every 2 steps, and its time limit raised, so the rest runs whatever
       this machine's speed.
    2. The requeued run resumes; once it has checkpointed past where it started, node2 dies whole (its slurmd, its
       launcher and its rank killed at once). The rank on node1 says it lost its peer and exits; Slurm declares the
       node down (SlurmdTimeout) and requeues the job.
    3. That job is cancelled; node2's slurmd starts again, and a new submission resumes from the last checkpoint
       and finishes.

    Every step is trained once, with, bit for bit, the losses of the same stage run straight through on two local
    ranks; nothing checkpointed is lost; the export merges the adapters."""
    import yaml
    from safetensors.torch import load_file

    from train_support import metrics, write_recipe, write_stage_shards

    write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=2, per_shard=16)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "shards", tmp_path / "run",
                          lora={"r": 4, "alpha": 8}, save_every=1000, stage1=dict(steps=100_000, lr=1.0e-2))
    out = tmp_path / "job.out"

    def submit(*limits: str) -> str:
        return subprocess.run(["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", *limits,
                               f"--output={out}", f"--chdir={REPO}", str(REPO / "launchers" / "train.slurm"),
                               str(recipe), "stage1"], env=rank_env(GPUS_PER_NODE="1", **slurm.env_overrides),
                              capture_output=True, text=True, check=True).stdout.strip().split(";")[0]

    job = submit("--time=2", "--signal=USR1@60")
    stage, run = tmp_path / "run" / "stage1", tmp_path / "run"

    def until_restarts(n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (fields := job_fields(slurm, job))["Restarts"] != str(n):
            assert fields["JobState"] not in ENDED, (fields, out.read_text()[-4000:])
            assert time.monotonic() < deadline, out.read_text()[-4000:]
            time.sleep(0.5)

    # 1. The signal stops the first run at a checkpoint; the job is requeued (waiting for its begin time).
    until_restarts(1, timeout=300)
    stopped_at = len(metrics(run))
    assert stopped_at >= 1 and (stage / "checkpoints" / f"step{stopped_at:08d}").is_dir(), out.read_text()[-4000:]
    assert "stopped before the end (time limit); requeueing" in out.read_text()
    settings = yaml.safe_load(recipe.read_text())
    settings["stages"][0]["steps"] = steps = stopped_at + 24
    settings["train"]["save_every"] = 2  # for part 2 (a cadence: it does not stop a checkpoint from resuming)
    recipe.write_text(yaml.safe_dump(settings, sort_keys=False))
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], env=slurm.env, check=True)
    # While Slurm holds it, the same stage runs uninterrupted on two local ranks: the losses to continue.
    reference_log = tmp_path / "reference.log"
    with reference_log.open("w") as log_file:
        reference = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc_per_node=2", "-m", "t2t.cli", "train", "--config", str(recipe),
                                      "--stage", "stage1", "--set", f"run_dir={tmp_path / 'reference'}"],
                                     cwd=REPO, env=rank_env(), stdout=log_file, stderr=subprocess.STDOUT)

    # 2. The requeued run resumes and logs a step past its next checkpoint (so that one is complete); node2 dies.
    deadline = time.monotonic() + 300
    while len(metrics(run)) < stopped_at + 5:
        assert job_fields(slurm, job)["JobState"] not in ENDED, out.read_text()[-4000:]
        assert time.monotonic() < deadline, out.read_text()[-4000:]
        time.sleep(0.2)
    slurm.kill_node("node2")
    until_restarts(2, timeout=120)  # Slurm requeues a job whose node failed (it asks for --requeue)
    assert "lost contact with another rank" in out.read_text(), out.read_text()[-4000:]
    assert len(metrics(run)) < steps, "the stage ended before node2 was killed"

    # 3. The job ends there, and once node2 is back a new submission of it resumes from the last checkpoint and
    #    finishes the stage. (Left requeued, the job would start again the moment node2 returns, and its step there
    #    was killed some 25 s later, most likely by the terminate request Slurm had queued for that node's part of
    #    the job's earlier run, which has the same job id: tests/cluster/README.md.)
    subprocess.run(["scancel", job], env=slurm.env, check=True)
    slurm.start_slurmd("node2")
    slurm.wait_idle(60)
    job = submit("--time=10")
    fields = wait_for(slurm, job, ENDED, timeout=300)
    assert reference.wait(timeout=300) == 0, reference_log.read_text()[-4000:]
    log = out.read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    resumed = re.findall(r"resumed from \S*/step(\d+)", log)
    assert [int(s) for s in resumed[:1]] == [stopped_at] and int(resumed[-1]) > stopped_at, log[-4000:]
    assert "t2t train stage1: finished; model in" in log, log[-4000:]
    hostfile = tmp_path / "run" / "slurm" / job / "hostfile"
    assert hostfile.read_text().splitlines() == ["node1 slots=1", "node2 slots=1"]
    assert "master node1:" in log and "--node_rank=0" in log and "--node_rank=1" in log
    assert [m["step"] for m in metrics(run)] == list(range(1, steps + 1))  # none lost or repeated
    # Two hosts, stopped twice, give bit for bit the losses of two local ranks that ran straight through.
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in metrics(tmp_path / "reference")]
    for ckpt in sorted((stage / "checkpoints").glob("step*")):
        assert len(list(ckpt.glob("*optim_states.pt"))) == 2  # one ZeRO-3 partition per rank
    merged = load_file(stage / "model" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora" in k for k in merged) and merged.keys() == base.keys()
    changed = [k for k in base if not (merged[k] == base[k]).all()]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only the adapted layers moved


def test_train_slurm_asks_for_the_pre_timeout_signal_and_requeue():
    script = (REPO / "launchers" / "train.slurm").read_text()
    assert "#SBATCH --signal=USR1@" in script and "#SBATCH --requeue" in script
    assert "trap \"\" USR1" in script and "scontrol requeue" in script and "--kill-on-bad-exit=1" in script


def one_stage_recipe(tmp_path, model_dir):
    """recipes/tiny.yaml cut to one 3-step stage of the session's tiny model on one rank, its targets and evaluation
    (STSBenchmark) in the jobs' own processes."""
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    recipe.update(name="sw", run_dir="runs/sw")
    recipe["model"] = dict(path=str(model_dir), pooling="mean", max_length=32)
    recipe["data"].update(max_texts=200, shards_dir="shards/sw", loader_workers=0)
    recipe["targets"].update(shard_size=100, workers=0)
    recipe["train"].update(micro_batch_size=8, save_every=50, nproc=1, train_embeddings=False)
    recipe["eval"].update(tasks=["STSBenchmark"], workers=0, out_dir="runs/sw/eval")
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0].update(steps=3, schedule="constant", warmup_steps=0)
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_slurm_sweep_runs_dependent_jobs_cancels_a_failed_steps_dependants_and_reruns_only_them(
        slurm, tiny_model_dir, tmp_path, monkeypatch):
    """`t2t sweep --backend slurm` on real Slurm: a 2×1 grid over the corpus, one job per step, chained by
    `--dependency=afterok` and released by Slurm itself. The point whose corpus is empty fails at its targets, and
    Slurm cancels exactly its training (`--kill-on-invalid-dep`); the table's job, after all of them, evaluates the
    other point and names the failure. A rerun submits the failed point's steps and those made stale by a changed
    corpus, nothing else."""
    import gzip
    import json

    from conftest import CORPUS
    from t2t.sweep.runner import Sweep

    with gzip.open(CORPUS, "rt") as f:
        (tmp_path / "a.txt").write_text("".join(next(f) for _ in range(200)))
    (tmp_path / "b.txt").write_text("")
    recipe = one_stage_recipe(tmp_path, tiny_model_dir)
    env = rank_env(GPUS_PER_NODE="1", **slurm.env_overrides)
    root = tmp_path / "runs" / "sw-sweep"

    def submit() -> dict:
        done = subprocess.run([sys.executable, "-m", "t2t.cli", "sweep", "--config", str(recipe), "--grid",
                               "data.corpus=a.txt,b.txt", "--backend", "slurm", "--sbatch=--nodes=1",
                               "--sbatch=--gpus-per-node=0", "--sbatch=--cpus-per-task=1"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((root / "slurm.json").read_text()), done.stdout + done.stderr

    # 1. Four step jobs and the table's; b's targets fail, and Slurm cancels b's training, which waited on them.
    first, _ = submit()
    jobs = first["jobs"]
    monkeypatch.chdir(tmp_path)
    key = {(node.step, node.points[0]): node.key for node in Sweep.load(root).nodes.values()}
    assert sorted(jobs) == sorted(key.values())
    finish = wait_for(slurm, first["finish"], {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400)
    state = {(step, point): job_fields(slurm, jobs[k]) for (step, point), k in key.items()}
    a_targets, a_train = state["stage1:targets", "corpus=a.txt"], state["stage1:train", "corpus=a.txt"]
    b_targets, b_train = state["stage1:targets", "corpus=b.txt"], state["stage1:train", "corpus=b.txt"]
    assert a_targets["JobState"] == a_train["JobState"] == "COMPLETED", state
    assert a_train["StartTime"] >= a_targets["EndTime"], state  # Slurm released it when its targets were done
    assert b_targets["JobState"] == "FAILED", state
    assert b_train["JobState"] == "CANCELLED" and b_train["Reason"] == "DependencyNeverSatisfied", state
    assert finish["JobState"] == "FAILED" and finish["ExitCode"] == "1:0", finish  # one point failed
    result = json.loads((root / "sweep.json").read_text())
    assert result["rows"]["corpus=a.txt"]["status"] == "done"
    assert result["rows"]["corpus=a.txt"]["scores"]["STSBenchmark"] is not None
    failed = result["rows"]["corpus=b.txt"]
    assert failed["status"] == "failed" and failed["failed_step"] == "stage1:targets", failed
    assert "holds no texts" in failed["error"]

    # 2. b's corpus filled and a's changed: a rerun submits b's two steps, a's two again (its targets no longer
    #    match its corpus, and its training read them), and the table's job.
    (tmp_path / "b.txt").write_text((tmp_path / "a.txt").read_text())
    (tmp_path / "a.txt").write_text("".join((tmp_path / "a.txt").read_text().splitlines(keepends=True)[50:]))
    second, out = submit()
    assert sorted(second["jobs"]) == sorted(k for k in key.values() if not k.startswith("base")), out
    assert "stage1:targets of corpus=a.txt: stale, runs again: its outputs" in out, out
    finish = wait_for(slurm, second["finish"], {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400)
    assert finish["JobState"] == "COMPLETED", (root / "logs" / "finish.log").read_text()[-3000:]
    result = json.loads((root / "sweep.json").read_text())
    assert result["progress"] == {"points": 2, "done": 2, "failed": 0}
    assert "corpus=b.txt" in (root / "sweep.md").read_text()
    manifest = json.loads((root / "points" / "corpus=a.txt" / "shards" / "stage1" / "manifest.json").read_text())
    assert manifest["samples"] == 150  # a's stage 1 now reads its 150 texts


# ---------------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster(slurm, tmp_path_factory):
    """Ray on the two nodes, with Ray's own settings (a lost node is declared dead after its health checks fail for
    about 15 s). node2's workers carry a fault hook: the first target worker there to take a shard hangs, once
    (`hung` records it)."""
    from t2t.jobs.target_workers import FAULT_ENV

    slurm.hung = tmp_path_factory.mktemp("ray-fault") / "hung"
    return slurm.start_ray({"node2": {FAULT_ENV: f"shards:*:{slurm.hung}:hang"}})


def submit_ray_job(cluster: Cluster, script: str, *args: str, cwd) -> str:
    job = subprocess.run(["bash", str(REPO / "launchers" / script), *args], cwd=cwd, capture_output=True, text=True,
                         env=dict(rank_env(**cluster.ray_env), T2T_PYTHON=sys.executable), timeout=300)
    out = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in out, out[-4000:]
    return out


@pytest.mark.slow
def test_an_eval_job_spreads_its_tasks_over_both_nodes_and_scores_as_in_one_process(ray_cluster, tiny_model_dir,
                                                                                      tmp_path, monkeypatch):
    """launchers/submit_eval.sh through `ray job submit`: two Ray workers, one on each node (Ray places the second
    where the first leaves more room); the scores are those of the same evaluation in one process."""
    import json

    from t2t.config import ModelConfig
    from t2t.eval import run_eval
    from t2t.model import export, from_config

    model = export(from_config(ModelConfig(path=str(tiny_model_dir))), tmp_path / "tiny-export")
    tasks = ["STSBenchmark", "BIOSSES", "SciFact"]
    submit_ray_job(ray_cluster, "submit_eval.sh", "--model", str(model), "--tasks", *tasks, "--workers", "2",
           "--max-samples", "32", "--batch-size", "16", "--out", str(tmp_path / "cluster"), cwd=tmp_path)
    on_cluster = json.loads((tmp_path / "cluster" / "results.json").read_text())
    assert {node for node, _ in ray_cluster.ray_actors("EvalWorker")} == set(NODES.values())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    here = run_eval([str(model)], tasks=tasks, workers=0, max_samples=32, batch_size=16, out_dir=str(tmp_path / "here"))
    assert on_cluster["scores"] == here["scores"] and len(here["scores"]["tiny-export"]) == len(tasks)


@pytest.mark.slow
def test_a_targets_job_on_both_nodes_survives_losing_node2_with_the_bytes_of_one_process(ray_cluster,
                                                                                        tiny_model_dir, tmp_path):
    """launchers/submit_targets.sh through `ray job submit`, two target workers: one on each node (one CPU each
    to spare on node1, one on node2). node2's worker hangs on its first shard; then node2 dies whole (every process
    in its namespace killed at once). Ray restarts that worker on node1 and the shard is written there: the job
    succeeds, and its shards are, byte for byte, those of the same job computed in one process."""
    import gzip

    import yaml

    from conftest import CORPUS
    from t2t.config import load_config
    from t2t.data.manifest import read_manifest
    from t2t.jobs.targets import run_targets

    with gzip.open(CORPUS, "rt") as f:
        (tmp_path / "corpus.txt").write_text("".join(next(f) for _ in range(600)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": str(tiny_model_dir), "max_length": 48},
                                      "data": {"corpus": str(tmp_path / "corpus.txt"),
                                               "shards_dir": str(tmp_path / "cluster")},
                                      "targets": {"shard_size": 50, "workers": 2}}))
    job = subprocess.Popen(["bash", str(REPO / "launchers" / "submit_targets.sh"), str(recipe), "stage1"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(rank_env(**ray_cluster.ray_env), T2T_PYTHON=sys.executable))
    try:
        deadline = time.monotonic() + 120
        while not ray_cluster.hung.exists():
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-4000:]
            time.sleep(0.2)
        assert "on node2 hung on shards chunk" in ray_cluster.hung.read_text()
        ray_cluster.kill_node("node2")
        out = job.communicate(timeout=180)[0]
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0 and "succeeded" in out, out[-4000:]
    # node2's worker was restarted once, on node1; node1's never.
    assert ray_cluster.ray_actors("TargetWorker") == [(NODES["node1"], 0), (NODES["node1"], 1)]
    manifest = read_manifest(tmp_path / "cluster" / "stage1")
    assert manifest["complete"] and manifest["samples"] == 600 and len(manifest["shards"]) == 12

    here = run_targets(load_config(str(recipe), [f"data.shards_dir={tmp_path / 'here'}", "targets.workers=0"]), "stage1")
    assert manifest["shards"] == here["shards"]  # each shard's name, size and sha256
    for shard in (tmp_path / "here" / "stage1").glob("*.tar"):
        assert shard.read_bytes() == (tmp_path / "cluster" / "stage1" / shard.name).read_bytes()
