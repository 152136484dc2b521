"""Start a multi-rank training run on this machine (what `t2t pipeline` and launchers/train_local.sh do).

    from t2t.train import launch_local
    launch_local("recipes/demo.yaml", ["stages.stage1.steps=20"], stage="stage1", nproc=2,
                 log_file=Path("runs/train1.log"))

runs `torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config ... --stage stage1 --resume auto`
(torchrun picks a free port, so concurrent runs do not collide). One rank (`nproc=1`, and the automatic choice
on a CPU machine) is started as `python -m t2t.cli train ...` with the environment torchrun would give it: a
launcher process in between would only add its start-up (1-1.5 s of CPU) to every stage. Output of every rank goes to
`log_file`. A rerun resumes from the newest checkpoint. A stage is named as in the recipe's `stages`; each
rank trains it from the model it starts from (`t2t.run_paths.for_stage`).

Stopping: the first SIGTERM, SIGINT (Ctrl-C) or SIGHUP this process gets is passed on to torchrun (or the one
rank) once, as SIGTERM; torchrun sends it on to every rank, which finish their step and checkpoint, and waits for
them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds, default here 120, before it kills them; this process waits as long
for one rank). Then `TrainingStopped` names the checkpoint a rerun resumes from. A second Ctrl-C kills torchrun
and the ranks at once. torchrun (or the one rank) runs in a session of its own, so a Ctrl-C in the terminal
reaches it only through this process, once.
The ranks also stop by themselves when this process exits, even by SIGKILL (t2t/train/signals.py).

A failure says which rank died or failed, and how (from torchrun's summary in the log), where a rerun resumes
from, and why: the ranks' own `t2t train: ...` lines, and the failed rank's final exception where it raised one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 120
"""Seconds torchrun gives the ranks to checkpoint and exit after a stop signal before it kills them."""

LAUNCHER_EXIT_GRACE_S = 30
"""Seconds past its shutdown timeout that torchrun may take to exit after SIGTERM: by then it has killed the ranks
left and only writes its summary, which takes seconds. A torchrun still there is hung (or stopped): it and the ranks
are killed rather than waited on forever."""


class TrainingStopped(RuntimeError):
    """A stop signal ended the training run; the ranks checkpointed first (the message names the checkpoint)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class TrainingFailed(RuntimeError):
    """A rank failed; the message says which and how. `needs_a_fix`: it failed on bad input or a diverged loss
    (exit 2 or 3), which a rerun of the same command meets again."""

    def __init__(self, message: str, needs_a_fix: bool):
        super().__init__(message)
        self.needs_a_fix = needs_a_fix


def train_command(config_path: str | None, overrides: list[str], stage: str, resume: str = "auto") -> list[str]:
    """The per-rank `t2t train` arguments (after `python -m t2t.cli`) for stage `stage` (a name)."""
    cmd = ["train", "--stage", stage, "--resume", resume]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def local_ranks(nproc: int) -> int:
    """The ranks to start on this machine for `train.nproc`: the number given, or for 0 one per GPU, or one rank
    with every CPU core where there is no GPU. The automatic choice is logged in one line, with why."""
    if nproc > 0:
        return nproc
    import torch

    gpus = torch.cuda.device_count()
    if gpus:
        log.info("train.nproc 0 (automatic): %d rank(s), one per GPU", gpus)
        return gpus
    log.info("train.nproc 0 (automatic): 1 rank using all %d CPU cores; no GPU here, and ranks that share one "
             "machine's cores only add gloo traffic and optimizer sharding (set train.nproc to choose)",
             os.cpu_count() or 1)
    return 1


def rank_launcher(nproc: int, env: dict) -> list[str]:
    """The command that starts `nproc` ranks of `python -m ...` here: torchrun, or for one rank the interpreter
    itself, with the rank's variables set in `env` as torchrun sets them (engine.init_distributed gives a world of
    one its own free port); `RANK` in the environment is what tells `t2t train` it was launched (t2t/commands/
    train_cmd.py), so it watches T2T_LAUNCHER_PIDS and keeps an early pre-timeout signal as under torchrun."""
    if nproc == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        env.pop("MASTER_PORT", None)  # one the parent was given belongs to the parent's own process group
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def launch_local(config_path: str | None, overrides: list[str], stage: str, nproc: int, log_file: Path) -> None:
    """Train the stage named `stage` with `nproc` ranks on this machine (0: `local_ranks` chooses).

    Raises TrainingStopped after a stop signal (see the module docstring) and TrainingFailed naming the
    stage, the failed rank and the log on failure."""
    from t2t.config import load_config
    from t2t.errors import UserError
    from t2t.run_paths import checkpoints_dir, metrics_file
    from t2t.train.export import stage_complete
    from t2t.train.signals import LAUNCHER_PIDS, PassOnStop

    cfg = load_config(config_path, overrides)
    steps = cfg.stage(stage).steps  # an unknown name: a ConfigError listing the recipe's stages
    if nproc < 0:
        raise UserError(f"nproc must be at least 0 (0 = automatic), got {nproc}")
    nproc = local_ranks(nproc)
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT))
    env[LAUNCHER_PIDS] = ",".join(filter(None, [str(os.getpid()), os.environ.get(LAUNCHER_PIDS, "")]))
    cmd = rank_launcher(nproc, env) + ["-m", "t2t.cli", *train_command(config_path, overrides, stage)]
    ckpt_dir = checkpoints_dir(cfg, stage)
    with log_file.open("a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        start = log.tell()
        # A session of its own: a Ctrl-C in the terminal reaches torchrun (or the rank) only through PassOnStop,
        # once.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with PassOnStop(proc) as stop:
            try:
                _follow(proc, metrics_file(cfg, stage), stage, steps, stop)
            except BaseException:
                stop.stop()  # never leave the ranks behind, whatever went wrong here
                _wait(proc)
                raise
        code = proc.returncode
    if stop.received is not None:
        raise TrainingStopped(_stopped_message(stage, stop.received, ckpt_dir, stage_complete(cfg, stage),
                                               log_file), stop.received)
    if code != 0:
        text = _read_from(log_file, start)
        lone = nproc == 1
        rank_code = code if lone else _root_cause(text)[2]
        raise TrainingFailed(failure_message(stage, code, text, ckpt_dir, log_file, lone=lone), rank_code in (2, 3))
    if not stage_complete(cfg, stage):
        raise RuntimeError(f"{stage}: training stopped before its final export (interrupted?); "
                           f"{resume_hint(ckpt_dir)}; see {log_file}")


def _stop_bound() -> float:
    """How long torchrun may take to exit after SIGTERM: its shutdown timeout (as launch_local sets it), then the
    grace."""
    return float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT)) + LAUNCHER_EXIT_GRACE_S


def _wait(proc: subprocess.Popen) -> None:
    """Wait for `proc`, sent SIGTERM, also through a KeyboardInterrupt (which PassOnStop raises after killing it);
    after `_stop_bound()` seconds kill it and every process under it."""
    bound = _stop_bound()
    deadline = time.monotonic() + bound
    while True:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
        except subprocess.TimeoutExpired:
            _kill_hung(proc, bound)
        except KeyboardInterrupt:
            continue


def _kill_hung(proc: subprocess.Popen, bound: float) -> None:
    from t2t.train.signals import kill_tree

    log.error("the launcher (pid %d) did not exit within %.0f s of SIGTERM; killing it and the ranks", proc.pid, bound)
    kill_tree(proc.pid)
    proc.wait()  # SIGKILL cannot be ignored


def resume_hint(ckpt_dir: Path) -> str:
    """`rerun to resume from stepN in DIR`, or that a rerun starts over."""
    from t2t.train.checkpoint import latest_tag

    tag = latest_tag(ckpt_dir)
    if tag is None:
        return f"no checkpoint in {ckpt_dir} yet: a rerun starts the stage over"
    return f"rerun to resume from {tag} in {ckpt_dir}"


def _stopped_message(stage: str, signum: int, ckpt_dir: Path, complete: bool, log_file: Path) -> str:
    from t2t.train.signals import signal_name

    if complete:
        return (f"{stage}: training finished before {signal_name(signum)} stopped it; "
                f"a rerun goes on after it (log: {log_file})")
    return f"{stage}: training stopped by {signal_name(signum)}; {resume_hint(ckpt_dir)} (log: {log_file})"


# torchrun's failure summary (torch.distributed.elastic's ChildFailedError), per failed rank.
_FAILURE = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)
# A rank's line as torch's excepthook writes it once the process group is up (`[rank0]: `), or torchrun with --tee
# (`[default0]:`) or a TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE of `[${rank}]:`; lines with none are a rank's too.
_PREFIX = r"\[(?:rank|default)?(\d+)\]:\s?"
_RANK_LINE = re.compile(rf"^(?:{_PREFIX})?(t2t train: .*)$", re.MULTILINE)
EXCEPTION_LINES = 4
"""The most lines of a rank's final exception the console shows: its `Type: message` line and 3 more of the message,
enough for a pydantic error's field and what it expected; the traceback and anything longer stay in the log."""
# What ends an exception's message in a log without rank prefixes: the next traceback, torchrun's own log lines
# (`E1207 06:09:51.615000 ...`) and t2t's (`06:09:51 INFO ...`).
_NOT_MESSAGE = re.compile(r"^(?:Traceback |During handling |The above exception |[WEI]\d{4} \d\d:|\d\d:\d\d:\d\d )")


def failure_message(stage: str, code: int, log_text: str, ckpt_dir: Path, log_file: Path, lone: bool = False) -> str:
    """What went wrong, from this run's part of the log: the rank that failed first and how (`rank 1 died
    (signal 9, SIGKILL)`), where a rerun resumes from, then why: that rank's final exception (`rank 0:
    ValueError: ...`) where it raised one, and the ranks' own `t2t train: ...` lines; the log's tail only when
    none of these is there. `lone`: one rank started without torchrun, whose exit `code` is the rank's own."""
    cause, rank, rank_code = _lone_cause(code) if lone else _root_cause(log_text)
    head = f"{stage}: training failed: {cause or f'the launcher exited with code {code}'}; "
    if rank_code not in (2, 3):  # a user error, a diverged loss: the rank's own line says what to do
        head += f"{resume_hint(ckpt_dir)}; "
    head += f"see {log_file}"
    own = list(dict.fromkeys(m.group(2).rstrip() for m in _RANK_LINE.finditer(log_text)))
    raised, its_own = rank_exception(log_text, rank)
    # Another rank's exception, or one no prefix ties to a rank, only where no rank said anything itself.
    lines = [head, *(raised if its_own or not own else []), *own[:8]]
    if len(lines) > 1:
        return "\n".join(lines)
    if cause:
        return head
    return head + ":\n" + _tail(_before_launcher_traceback(log_text))


def rank_exception(log_text: str, rank: int | None) -> tuple[list[str], bool]:
    """(the final exception of a rank's last traceback in the log as console lines, whether it is `rank`'s): the
    `Type: message` line, prefixed `rank R: ` where the log says which rank wrote it, and at most EXCEPTION_LINES - 1
    lines of the message. `rank`'s own where its lines carry a prefix (torch adds `[rankR]: ` once the process group
    is up), else the last traceback without a prefix (from before that: which rank is not known), else another
    rank's; ([], False) if the log holds no traceback of a rank."""
    by_rank: dict[int | None, list[str]] = {}
    for line in _before_launcher_traceback(log_text).splitlines():
        m = re.match(_PREFIX, line)
        by_rank.setdefault(int(m.group(1)) if m else None, []).append(line[m.end():] if m else line)
    for key in dict.fromkeys([rank, None, *sorted(k for k in by_rank if k is not None)]):
        lines = _final_exception(by_rank.get(key, []))
        if lines:
            return [f"rank {key}: {lines[0]}" if key is not None else lines[0],
                    *(f"  {line}" for line in lines[1:])], key is not None and key == rank
    return [], False


def _final_exception(lines: list[str]) -> list[str]:
    """The exception line after the last `Traceback (most recent call last):` in `lines`, and its message's next
    lines."""
    starts = [i for i, line in enumerate(lines) if line.rstrip() == "Traceback (most recent call last):"]
    if not starts:
        return []
    i = starts[-1] + 1
    while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
        i += 1  # the frames: `  File ...`, their source lines and ^^^ markers
    out = lines[i:i + 1]
    for line in lines[i + 1:]:
        if len(out) == EXCEPTION_LINES or not line.strip() or _NOT_MESSAGE.match(line):
            break
        if not line.strip().startswith("For further information visit"):  # pydantic's link to its docs: no cause
            out.append(line.rstrip())
    return [line.rstrip() for line in out]


def _root_cause(log_text: str) -> tuple[str | None, int | None, int | None]:
    """(`rank R died (signal N, NAME)` or `rank R exited with code N`, R, its exit code), or (None, None, None).

    torchrun's "Root Cause" is the earliest error file, but a rank killed by a signal writes none: its
    survivors, which exit by themselves ("lost contact", code 4) or die of the SIGTERM torchrun then sends,
    can come first. So a rank killed by any other signal is named first; then torchrun's root cause."""
    root = log_text.split("Root Cause", 1)[-1] if "Root Cause" in log_text else log_text
    failures = [(int(m.group(1)), int(m.group(2))) for text in (root, log_text) for m in _FAILURE.finditer(text)]
    if not failures:
        return None, None, None
    rank, code = next(((r, c) for r, c in failures if c < 0 and -c != signal.SIGTERM), failures[0])
    if code < 0:
        from t2t.train.signals import signal_name

        return f"rank {rank} died (signal {-code}, {signal_name(-code)})", rank, code
    return f"rank {rank} exited with code {code}", rank, code


def _lone_cause(code: int) -> tuple[str, int, int]:
    """`_root_cause` of one rank started without torchrun, from its own exit code (a Popen's: -N for signal N)."""
    if code < 0:
        from t2t.train.signals import signal_name

        return f"rank 0 died (signal {-code}, {signal_name(-code)})", 0, code
    return f"rank 0 exited with code {code}", 0, code


def _before_launcher_traceback(log_text: str) -> str:
    """The log without torchrun's own closing traceback (ChildFailedError), which says nothing of the cause."""
    lines = log_text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if "ChildFailedError" in lines[i]:
            for j in range(i, -1, -1):
                if lines[j].startswith("Traceback (most recent call last)"):
                    return "\n".join(lines[:j])
            break
    return log_text


def _follow(proc: subprocess.Popen, metrics: Path, stage: str, steps: int, stop=None) -> None:
    """Show a progress bar fed by rank 0's metrics.jsonl until the launcher exits."""
    from tqdm.auto import tqdm

    from t2t.train.signals import signal_name

    stopped_at = None  # when a stop was first seen: torchrun has _stop_bound() seconds from then to exit
    with tqdm(total=steps, desc=f"train {stage}", unit="step") as bar:
        while proc.poll() is None:
            time.sleep(1.0)
            if stop is not None and stop.received is not None and stopped_at is None:
                stopped_at = time.monotonic()
                bar.write(f"{signal_name(stop.received)}: the ranks finish their step and checkpoint, then stop "
                          f"(Ctrl-C again stops them at once)", file=sys.stderr)
            elif stopped_at is not None and time.monotonic() - stopped_at > _stop_bound():
                _kill_hung(proc, _stop_bound())
            last = _last_record(metrics)
            if last is not None and last["step"] != bar.n:
                if not bar.initial:  # the rate and ETA count from the first step, not the ranks' start-up
                    bar.reset(total=steps)
                    bar.initial = last["step"]
                bar.n = last["step"]
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                bar.refresh()


def _last_record(metrics: Path) -> dict | None:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
    return None


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


__all__ = ["launch_local", "local_ranks", "rank_launcher", "train_command", "TrainingStopped", "TrainingFailed",
           "failure_message", "rank_exception", "SHUTDOWN_TIMEOUT", "LAUNCHER_EXIT_GRACE_S"]
