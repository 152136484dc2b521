"""What `launch_local` tells the console when a rank fails, and that it never waits on a hung launcher for ever.

Fast: failure_message on logs shaped as torchrun and torch really write them (a rank's traceback is prefixed
`[rankN]: ` by torch's excepthook once its process group is up, and bare before), gloo's timeout is a lost peer,
and a launcher that ignores SIGTERM is killed once its shutdown time and the grace are over (a real process).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from t2t.train import launch
from t2t.train.launch import failure_message


def rank_traceback(rank: int | None, *exception: str) -> str:
    """A rank's traceback as it reaches the log: frames, then the exception's lines."""
    lines = ["Traceback (most recent call last):", '  File "t2t/train/engine.py", line 259, in build_engine',
             "    embedder = build_model(cfg, model_dir, ds)", "               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
             *exception]
    return "".join(f"[rank{rank}]: {line}\n" if rank is not None else f"{line}\n" for line in lines)


VALIDATION_ERROR = (
    "pydantic_core._pydantic_core.ValidationError: 1 validation error for DeepSpeedZeroConfig",
    "overlap_comm",
    "  Input should be a valid boolean, unable to interpret input [type=bool_parsing, input_value='maybe', "
    "input_type=str]",
    "    For further information visit https://errors.pydantic.dev/2.14/v/bool_parsing",
)


def torchrun_summary(*failures: tuple[int, int], root: tuple[int, int]) -> str:
    """torchrun's closing traceback and failure summary (rank, exit code) as it writes them."""
    def entry(rank, code):
        return f"  rank      : {rank} (local_rank: {rank})\n  exitcode  : {code} (pid: 4{rank})\n  error_file: <N/A>\n"

    return ("W1207 06:09:51.550000 2728 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 2745 "
            "closing signal SIGTERM\n"
            "E1207 06:09:51.615000 2728 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) "
            "local_rank: 0 (pid: 2744) of binary: python\n"
            "Traceback (most recent call last):\n  File \"torch/distributed/run.py\", line 1032, in <module>\n"
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
            "t2t.cli FAILED\nFailures:\n" + "".join(entry(*f) for f in failures) +
            "Root Cause (first observed failure):\n[0]:\n" + entry(*root))


def test_the_console_names_the_failed_ranks_own_exception(tmp_path):
    log, none = tmp_path / "train.log", tmp_path / "no-checkpoints"
    # Both ranks fail on a value DeepSpeed's pydantic model rejects; torchrun then SIGTERMs rank 1.
    text = (rank_traceback(0, *VALIDATION_ERROR) + rank_traceback(1, *VALIDATION_ERROR)
            + torchrun_summary((1, -15), root=(0, 1)))
    assert failure_message("stage1", 1, text, none, log).splitlines() == [
        f"stage1: training failed: rank 0 exited with code 1; no checkpoint in {none} yet: a rerun starts the stage "
        f"over; see {log}",
        "rank 0: pydantic_core._pydantic_core.ValidationError: 1 validation error for DeepSpeedZeroConfig",
        "  overlap_comm",
        "    Input should be a valid boolean, unable to interpret input [type=bool_parsing, input_value='maybe', "
        "input_type=str]",
    ]

    # Before its process group is up a rank's traceback has no prefix: its exception, not torchrun's log lines.
    text = rank_traceback(None, "FileNotFoundError: [Errno 2] No such file or directory: '/data/gone'") \
        + torchrun_summary(root=(0, 1))
    msg = failure_message("stage1", 1, text, none, log).splitlines()
    assert msg[1:] == ["FileNotFoundError: [Errno 2] No such file or directory: '/data/gone'"]

    # Rank 1 raised; rank 0 lost it and said so: rank 1's exception first, then rank 0's own line.
    lost = "t2t train: rank 0 lost contact with another rank after step 5 (did it die? Connection reset by peer)\n"
    text = (rank_traceback(1, "RuntimeError: shapes cannot be multiplied (4x64 and 32x64)") + lost
            + torchrun_summary((0, 4), root=(1, 1)))
    msg = failure_message("stage1", 1, text, none, log).splitlines()
    assert msg[0].startswith("stage1: training failed: rank 1 exited with code 1;")
    assert msg[1:] == ["rank 1: RuntimeError: shapes cannot be multiplied (4x64 and 32x64)", lost.strip()]


def test_one_rank_started_without_torchrun_is_named_from_its_own_exit_code(tmp_path):
    """launch_local starts one rank as `python -m t2t.cli train` (no torchrun, so no summary in the log): its exit
    code says how it failed."""
    from t2t.train.launch import rank_launcher

    env = {"MASTER_PORT": "29500"}
    assert rank_launcher(1, env) == [sys.executable]
    assert env == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    assert rank_launcher(2, {})[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

    none, log = tmp_path / "ckpt", tmp_path / "train.log"
    text = rank_traceback(0, "RuntimeError: shapes cannot be multiplied (4x64 and 32x64)")
    msg = failure_message("stage1", 1, text, none, log, lone=True).splitlines()
    assert msg == [f"stage1: training failed: rank 0 exited with code 1; no checkpoint in {none} yet: a rerun "
                   f"starts the stage over; see {log}",
                   "rank 0: RuntimeError: shapes cannot be multiplied (4x64 and 32x64)"]
    msg = failure_message("stage1", -9, "", none, log, lone=True)
    assert msg.startswith("stage1: training failed: rank 0 died (signal 9, SIGKILL); no checkpoint"), msg
    # exit 2 (bad input): the rank's own line says what to fix, and a rerun would not help
    said = "t2t train: stages.stage1.lr must be positive\n"
    assert failure_message("stage1", 2, said, none, log, lone=True).splitlines() == [
        f"stage1: training failed: rank 0 exited with code 2; see {log}", said.strip()]


def test_a_peer_that_does_not_answer_within_the_process_group_timeout_is_lost():
    from t2t.train.rank import lost_peer

    # What gloo raised in a real 2-rank group (timeout 3 s) whose peer never joined the all_reduce.
    timeout = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed "
                           "out waiting 3000ms for recv operation to complete")
    assert lost_peer(timeout) == "Timed out waiting 3000ms for recv operation to complete"
    assert lost_peer(RuntimeError("Application timeout caused pair closure")) is not None
    assert lost_peer(RuntimeError("Timed out waiting for the data loader")) is None


IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
                  "time.sleep(120)"


@pytest.fixture
def hung_launcher(monkeypatch):
    """A stand-in for a torchrun that ignores SIGTERM, with a 1 s shutdown timeout and 1 s of grace."""
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "1")
    monkeypatch.setattr(launch, "LAUNCHER_EXIT_GRACE_S", 1, raising=False)
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline() == "up\n"
    yield proc
    proc.kill()
    proc.wait()


def finishes_within(seconds: float, fn) -> bool:
    done = threading.Event()
    threading.Thread(target=lambda: (fn(), done.set()), daemon=True).start()
    return done.wait(seconds)


def test_a_launcher_that_ignores_sigterm_is_killed_after_its_shutdown_time(hung_launcher, tmp_path):
    from t2t.train.signals import PassOnStop

    stop = PassOnStop(hung_launcher)  # not entered: its signal handlers belong to the main thread
    stop.received = signal.SIGTERM
    stop.stop()
    started = time.monotonic()
    assert finishes_within(20, lambda: launch._follow(hung_launcher, tmp_path / "metrics.jsonl", "stage1", 4, stop))
    assert hung_launcher.returncode == -signal.SIGKILL and time.monotonic() - started >= 2


def test_the_wait_after_a_failure_in_the_launcher_is_bounded_too(hung_launcher):
    hung_launcher.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert finishes_within(20, lambda: launch._wait(hung_launcher))
    assert hung_launcher.returncode == -signal.SIGKILL and time.monotonic() - started >= 2
