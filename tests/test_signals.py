"""Stop signals reach every rank, whichever process above them gets the signal, and no rank outlives its parent.

Fast tests (one process, or a few tiny ones): torchrun's failure summary becomes one line, a lost gloo peer is
recognised, launchers are recognised by their command line, a rank's launcher watch fires when a listed
ancestor dies (SIGKILL), and PassOnStop passes the first stop on exactly once.

Real runs (slow; 2 DeepSpeed ZeRO-3 ranks on CPU, gloo, the tiny model), one chain on one run directory,
each run resuming from the checkpoint the one before it stopped at (a test run alone starts fresh). The signal
is sent once the run has logged a step; then `ps` must show no process of the run left once the parent has
exited, a new checkpoint must be written and the parent must name it:
1. SIGTERM to the bare `deepspeed` command (it dies at once; the ranks notice and stop by themselves);
2. SIGTERM to launchers/train_local.sh;
3. SIGTERM, then 4. SIGINT, to the pid of `t2t pipeline` (base and targets stubbed: its real stage1:train step);
5. SIGKILL of rank 1 under launch_local: one line, `rank 1 died (signal 9, SIGKILL)`, then the survivor's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from train_support import REPO, metrics, rank_env, write_recipe, write_stage_shards

# ----------------------------------------------------------------------------- fast: one process


TORCHRUN_FAILURE = """\
[rank0]: RuntimeError: [../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:23714: Connection reset by peer.
t2t train: rank 0 lost contact with another rank after step 5 (did it die? Read error); rerun to resume
W1202 13:30:26.012000 6911 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 6974 closing signal SIGTERM
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
t2t.cli FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_13:30:26
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 6974)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 6974
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_13:30:26
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 6975)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 6975
======================================================
"""


def test_failure_message_names_the_dead_rank_and_the_ranks_own_lines_first(tmp_path):
    from t2t.train.launch import failure_message

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "latest").write_text("step00000004")
    msg = failure_message("stage1", 1, TORCHRUN_FAILURE, ckpt, tmp_path / "train1.log").splitlines()
    assert msg[0] == (f"stage1: training failed: rank 1 died (signal 9, SIGKILL); rerun to resume from step00000004 "
                      f"in {ckpt}; see {tmp_path / 'train1.log'}")
    assert msg[1].startswith("t2t train: rank 0 lost contact with another rank after step 5")
    assert len(msg) == 2  # no torchrun traceback
    # A killed rank writes no error file, so torchrun's root cause can be a survivor that exited by itself.
    survivor_first = ("Failures:\n  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 2)\n"
                      "Root Cause (first observed failure):\n  rank      : 0 (local_rank: 0)\n  exitcode  : 4 (pid: 1)\n")
    assert "rank 1 died (signal 9, SIGKILL)" in failure_message("stage1", 1, survivor_first, ckpt,
                                                                tmp_path / "l.log")

    user_error = "t2t train: error: shards/x/stage1/manifest.json does not exist\n" * 2 + TORCHRUN_FAILURE.split(
        "Traceback")[0] + "Root Cause\n  rank      : 0 (local_rank: 0)\n  exitcode  : 2 (pid: 1)\n"
    msg = failure_message("stage1", 1, user_error, tmp_path / "none", tmp_path / "l.log").splitlines()
    assert msg[0] == f"stage1: training failed: rank 0 exited with code 2; see {tmp_path / 'l.log'}"
    assert msg[1] == "t2t train: error: shards/x/stage1/manifest.json does not exist"  # once, not per rank

    msg = failure_message("stage1", 1, "some\nlauncher\noutput\n", tmp_path / "none", tmp_path / "l.log")
    assert "the launcher exited with code 1" in msg and "a rerun starts the stage over" in msg
    assert msg.endswith("some\nlauncher\noutput")


def test_a_lost_gloo_peer_is_recognised_and_nothing_else():
    from t2t.train.rank import lost_peer

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                        "[127.0.0.1]:23714: Connection reset by peer. This is typically caused by a remote worker")
    assert lost_peer(gloo) == "Read error [127.0.0.1]:23714: Connection reset by peer"
    try:
        try:
            raise gloo
        except RuntimeError as e:
            raise ValueError("wrapped") from e
    except ValueError as wrapped:
        assert lost_peer(wrapped) == "Read error [127.0.0.1]:23714: Connection reset by peer"
    assert lost_peer(RuntimeError("CUDA out of memory")) is None
    assert lost_peer(ValueError("Connection reset by peer")) is None  # not torch.distributed's


def test_a_lost_peer_is_named_with_the_last_step_the_rank_finished(monkeypatch):
    """`train` turns torch.distributed losing a rank into `PeerLost`, with the step the rank had finished (None
    when it never got to train); any other error goes on as it is."""
    from t2t.config import load_config
    from t2t.train import trainer
    from t2t.train.rank import PeerLost
    from t2t.train.trainer import TrainState

    def advance(self):
        self.step += 1
        if self.step == 5:
            raise RuntimeError("Connection reset by peer")
        return False

    def build(cfg, stage, resume, objective, rank, world):
        state = object.__new__(TrainState)  # only what `run` and `close` read
        state.step, state.total = 2, 10
        return state

    monkeypatch.setattr(trainer.run_paths, "check_start_attention", lambda cfg, stage: None)
    monkeypatch.setattr("t2t.train.engine.init_distributed", lambda: (0, 1))
    monkeypatch.setattr(trainer.torch.distributed, "destroy_process_group", lambda: None)
    monkeypatch.setattr(TrainState, "build", staticmethod(build))
    monkeypatch.setattr(TrainState, "advance", advance)
    monkeypatch.setattr(TrainState, "close", lambda self: None)
    cfg = load_config(None, ["model.path=m"])
    with pytest.raises(PeerLost) as lost:
        trainer.train(cfg, "stage1")
    assert (lost.value.step, lost.value.cause) == (5, "Connection reset by peer")
    assert str(lost.value) == "lost contact with another rank after step 5 (did it die? Connection reset by peer)"

    def never_built(*args):
        raise RuntimeError("Connection reset by peer")

    monkeypatch.setattr(TrainState, "build", staticmethod(never_built))
    with pytest.raises(PeerLost) as lost:
        trainer.train(cfg, "stage1")
    assert lost.value.step is None and str(lost.value).startswith("lost contact with another rank (did it die?")
    monkeypatch.setattr(TrainState, "build", staticmethod(lambda *a: (_ for _ in ()).throw(ValueError("a bug"))))
    with pytest.raises(ValueError, match="a bug"):
        trainer.train(cfg, "stage1")


def test_launchers_are_recognised_by_their_command_line():
    from t2t.train.signals import launcher_kind

    assert launcher_kind(["/v/bin/python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=x"])
    assert launcher_kind(["/v/bin/python", "/v/bin/deepspeed", "--num_gpus", "2"]) == "the deepspeed launcher"
    assert launcher_kind(["/v/bin/python", "-m", "torch.distributed.run", "--standalone"]) == "torchrun"
    assert launcher_kind(["/v/bin/python", "/v/bin/torchrun", "--nproc_per_node=2"]) == "torchrun"
    assert launcher_kind(["bash", "launchers/train_local.sh"]) is None
    assert launcher_kind(["/v/bin/python", "-m", "pytest", "tests/deepspeed"]) is None


WATCHER = """
import os, sys, time
from t2t.train.signals import LauncherWatch
watch = LauncherWatch(interval=0.1)
print("watching", [what for _, what in watch.watched], flush=True)
watch.start(lambda what: (print("gone:", what, flush=True), os._exit(0)))
time.sleep(60)
print("not noticed", flush=True)
"""


def test_a_rank_notices_when_a_listed_launcher_is_killed():
    """T2T_LAUNCHER_PIDS names the wrapper (here a bash that waits, then gets SIGKILL): its child notices."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("T2T_LAUNCHER_PIDS", None)
    wrapper = subprocess.Popen(["bash", "-c", f'T2T_LAUNCHER_PIDS=$$ "{sys.executable}" -c "$0" & wait', WATCHER],
                               env=env, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        first = wrapper.stdout.readline()
        assert f"pid {wrapper.pid}" in first, first
        import psutil

        child = psutil.Process(wrapper.pid).children()[0]
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait()
        started = time.time()
        child.wait(timeout=30)  # not our child: psutil sees it end, not its exit code
        assert time.time() - started < 5
        assert f"gone: the process that launched the ranks (pid {wrapper.pid})" in wrapper.stdout.read()
    finally:
        if child is not None and child.is_running():
            child.kill()


def test_a_listed_launcher_that_is_already_gone_counts_as_exited():
    from t2t.train.signals import LauncherWatch

    gone = subprocess.Popen(["true"])
    gone.wait()
    watch = LauncherWatch(environ={"T2T_LAUNCHER_PIDS": f"{gone.pid}"})
    assert watch.gone() == f"the process that launched the ranks (pid {gone.pid})"
    assert LauncherWatch(environ={}).gone() is None  # pytest's parents are no launchers


RECORDER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda s, f: print("SIGTERM", flush=True))
signal.signal(signal.SIGINT, lambda s, f: print("SIGINT", flush=True))
print("ready", flush=True)
time.sleep(60)
"""


def test_sigterm_to_any_other_verb_unwinds_it_and_exits_143(monkeypatch, capsys):
    """By default SIGTERM kills at once, skipping every `finally` (a pipeline's local Ray was left running)."""
    from t2t import cli
    from t2t.commands import config_cmd

    unwound = []

    def verb(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            unwound.append(True)

    monkeypatch.setattr(config_cmd, "run", verb)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["config", "--config", str(REPO / "recipes" / "tiny.yaml")]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert unwound == [True] and "t2t config: terminated; finished work is kept" in capsys.readouterr().err


def test_pass_on_stop_passes_the_first_signal_once_as_sigterm_and_a_second_ctrl_c_kills():
    from t2t.train.signals import PassOnStop

    before = signal.getsignal(signal.SIGTERM)
    child = subprocess.Popen([sys.executable, "-c", RECORDER], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout.readline() == "ready\n"
        with PassOnStop(child) as stop:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before kill returns to Python
            os.kill(os.getpid(), signal.SIGTERM)  # a second stop signal: already passed on, not again
            assert stop.received == signal.SIGINT
            assert child.stdout.readline() == "SIGTERM\n"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: killed at once
            assert child.wait(timeout=10) == -signal.SIGKILL
        assert child.stdout.read() == ""  # nothing else reached it
    finally:
        if child.poll() is None:
            child.kill()
    assert signal.getsignal(signal.SIGTERM) == before


# ----------------------------------------------------------------------------- slow: real 2-rank runs

STEPS = 200  # far more than a test waits for: every run here ends by a signal


@pytest.fixture(scope="module")
def chain(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run directory) shared by the chained runs; the recipe's path marks their processes in `ps`."""
    root = tmp_path_factory.mktemp("signals")
    write_stage_shards(tiny_model_dir, root / "shards" / "stage1", n_shards=2, per_shard=16)
    recipe = write_recipe(root / "r.yaml", tiny_model_dir, root / "shards", root / "run",
                          stage1=dict(steps=STEPS, lr=1.0e-3), nproc=2, save_every=50)
    return recipe, root / "run"


def processes_of(marker: str) -> list[str]:
    """`ps` lines of the live processes whose command line holds `marker` (zombies show no arguments)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True,
                         check=True).stdout
    return [line.strip() for line in out.splitlines() if marker in line]


@pytest.fixture
def run(chain):
    """The chain's (recipe, run dir, checkpoints dir, the checkpoint to resume from or None); kills, by pid,
    whatever a failed test left running of the run."""
    recipe, run_dir = chain
    ckpt_dir = run_dir / "stage1" / "checkpoints"
    yield recipe, run_dir, ckpt_dir, newest(run_dir)
    for line in processes_of(str(recipe)):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=rank_env(), stdout=out, stderr=subprocess.STDOUT)


def last_step(run_dir: Path) -> int:
    try:
        return max((m["step"] for m in metrics(run_dir)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def newest(run_dir: Path) -> str | None:
    from t2t.train.checkpoint import latest_tag

    return latest_tag(run_dir / "stage1" / "checkpoints")


def step_of(tag: str | None) -> int:
    from t2t.train.checkpoint import step_of

    return 0 if tag is None else step_of(tag)


def wait_for_step_after(step: int, run_dir: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until rank 0 has logged a step after `step` (the run is training, past its resume)."""
    deadline = time.time() + timeout
    while last_step(run_dir) <= step:
        assert proc.poll() is None, f"the run ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no step after {step} within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def check_stopped_and_resumed(resumed: str | None, out: str, ckpt_dir: Path, run_dir: Path) -> str:
    """The run resumed from `resumed`, logged every step once, and checkpointed a later step: its tag."""
    if resumed is not None:
        assert f"resumed from {ckpt_dir / resumed} at step {step_of(resumed)}" in out, out[-3000:]
    tag = newest(run_dir)
    assert step_of(tag) > step_of(resumed) and step_of(tag) == last_step(run_dir)
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, step_of(tag) + 1))
    assert out.count("stop signal received; checkpointed at step") == 2, out[-3000:]  # both ranks
    return tag


@pytest.mark.slow
def test_1_sigterm_to_the_bare_deepspeed_command_stops_every_rank(run):
    """SIGTERM kills `deepspeed` at once and its per-node launcher lives on: the ranks see the `deepspeed` they
    were started under gone, finish their step, checkpoint and exit by themselves."""
    recipe, run_dir, ckpt_dir, resumed = run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = recipe.parent / "1-deepspeed.log"
    ds = start(["deepspeed", "--num_gpus", "2", "--master_port", str(port), "--no_local_rank", "--module",
                "t2t.cli", "train", "--config", str(recipe), "--stage", "stage1"], log)
    wait_for_step_after(step_of(resumed), run_dir, ds, log)
    ds.send_signal(signal.SIGTERM)
    assert ds.wait(timeout=10) == -signal.SIGTERM
    deadline = time.time() + 120
    while processes_of(str(recipe)):
        assert time.time() < deadline, f"ranks still running:\n{processes_of(str(recipe))}\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    out = log.read_text()
    assert f"the deepspeed launcher (pid {ds.pid}) exited; stopping as on SIGTERM" in out, out[-3000:]
    assert "stopped by signal after a checkpoint" in out, out[-3000:]
    check_stopped_and_resumed(resumed, out, ckpt_dir, run_dir)


@pytest.mark.slow
def test_2_sigterm_to_train_local_sh_stops_every_rank_and_names_the_checkpoint(run):
    """Passed on once; the script exits 143 naming the checkpoint once every rank is gone."""
    recipe, run_dir, ckpt_dir, resumed = run
    log = recipe.parent / "2-train_local.log"
    sh = start(["bash", str(REPO / "launchers" / "train_local.sh"), str(recipe), "stage1"], log)
    wait_for_step_after(step_of(resumed), run_dir, sh, log)
    sh.send_signal(signal.SIGTERM)
    assert sh.wait(timeout=180) == 143, log.read_text()[-3000:]
    assert processes_of(str(recipe)) == []
    out = log.read_text()
    tag = check_stopped_and_resumed(resumed, out, ckpt_dir, run_dir)
    assert (f"train_local.sh: stage1: stopped by SIGTERM; rerun the same command to resume from {tag} in "
            f"{ckpt_dir}") in out, out[-3000:]


PIPELINE = """
import sys
from t2t import pipeline
from t2t.cli import main

# The backbone is the recipe's model.path as it is, and the test wrote the stage-1 shards: stage1:train is the real
# step.
pipeline.Pipeline.step_base = lambda self: None
pipeline.Pipeline.step_targets = lambda self, stage: None
sys.exit(main(["pipeline", "--config", sys.argv[1], "--until", "stage1:train"]))
"""


def stop_pipeline(run, sig: signal.Signals) -> None:
    """`sig` to the pid of `t2t pipeline` alone (not its process group): passed on once, and the pipeline
    exits 1 naming the checkpoint once every rank is gone."""
    recipe, run_dir, ckpt_dir, resumed = run
    train_log = run_dir / "logs" / "stage1-train.log"
    before = len(train_log.read_text()) if train_log.exists() else 0
    log = recipe.parent / f"pipeline-{sig.name}.log"
    proc = start([sys.executable, "-c", PIPELINE, str(recipe)], log)
    wait_for_step_after(step_of(resumed), run_dir, proc, log)
    proc.send_signal(sig)
    assert proc.wait(timeout=240) == 1, log.read_text()[-3000:]
    assert processes_of(str(recipe)) == []
    tag = check_stopped_and_resumed(resumed, train_log.read_text()[before:], ckpt_dir, run_dir)
    out = log.read_text()
    assert (f"t2t pipeline: step stage1:train: stage1: training stopped by {sig.name}; rerun to resume from {tag} "
            f"in {ckpt_dir}") in out, out[-3000:]


@pytest.mark.slow
def test_3_sigterm_to_the_pipeline_pid_stops_every_rank_and_names_the_checkpoint(run):
    stop_pipeline(run, signal.SIGTERM)


@pytest.mark.slow
def test_4_sigint_to_the_pipeline_pid_stops_every_rank_and_names_the_checkpoint(run):
    stop_pipeline(run, signal.SIGINT)


@pytest.mark.slow
def test_5_a_killed_rank_is_named_in_one_line_with_the_checkpoint_to_resume_from(run, monkeypatch):
    import psutil

    from t2t.train import launch_local

    recipe, run_dir, ckpt_dir, resumed = run
    for key, value in rank_env().items():
        monkeypatch.setenv(key, value)
    killed = []

    def kill_rank_1():
        deadline = time.time() + 300
        while last_step(run_dir) <= step_of(resumed) + 1 and time.time() < deadline:
            time.sleep(0.2)
        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(recipe) in " ".join(p.info["cmdline"] or []) and p.environ().get("RANK") == "1":
                    p.kill()
                    killed.append(p.pid)
            except psutil.Error:
                pass

    threading.Thread(target=kill_rank_1, daemon=True).start()
    log = recipe.parent / "5-killed.log"
    with pytest.raises(RuntimeError) as failed:
        launch_local(str(recipe), ["train.save_every=2"], stage="stage1", nproc=2, log_file=log)
    assert len(killed) == 1
    assert processes_of(str(recipe)) == []
    if resumed is not None:
        assert f"resumed from {ckpt_dir / resumed}" in log.read_text()
    lines = str(failed.value).splitlines()
    assert lines[0] == (f"stage1: training failed: rank 1 died (signal 9, SIGKILL); rerun to resume from "
                        f"{newest(run_dir)} in {ckpt_dir}; see {log}"), str(failed.value)
    assert lines[1].startswith("t2t train: rank 0 lost contact with another rank after step "), str(failed.value)
    assert "Traceback" not in str(failed.value)
