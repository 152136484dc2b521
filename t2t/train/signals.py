"""Stop signals: what a training rank does with them, and how the processes above the ranks pass them on.

A rank (`t2t train`): SIGTERM, SIGUSR1 (Slurm's pre-timeout signal) or a first Ctrl-C (SIGINT) is recorded
by `StopSignals`; the training loop all-reduces the flag with every step, so every rank finishes the same
step, checkpoints and returns. A second SIGINT interrupts at once, without the checkpoint.

A rank also stops as on SIGTERM when a launcher above it exits (`LauncherWatch`): its parent when that is a
launcher (torchrun, DeepSpeed's per-node launcher), the launchers above that one (the `deepspeed` command
above DeepSpeed's per-node launcher) and the processes listed in T2T_LAUNCHER_PIDS (`t2t pipeline` and
launchers/train_local.sh put themselves there). So a killed launcher never leaves ranks training on.

A parent that starts a launcher (`t2t.train.launch_local`, hence `t2t pipeline`) passes the first SIGTERM,
SIGINT or SIGHUP it gets on to the launcher once, as SIGTERM (`PassOnStop`); a second Ctrl-C kills the
launcher and everything under it at once. launchers/train_local.sh does the same in bash.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
LAUNCHER_PIDS = "T2T_LAUNCHER_PIDS"
"""Comma-separated pids of processes above the ranks whose exit must stop them (set by the t2t launchers)."""

_loop_started = False
_early: int | None = None
"""Slurm's pre-timeout SIGUSR1 when it reached a launched rank before its training loop (`install_rank_handlers`):
the loop takes it as received, so the rank finishes one step, checkpoints and exits."""


class StopSignals:
    """Records SIGTERM/SIGUSR1/SIGINT instead of dying, so the loop can checkpoint and exit cleanly.

    A second Ctrl-C (SIGINT) interrupts at once, without the checkpoint.
    """

    def __init__(self):
        global _loop_started
        _loop_started = True
        self.received: int | None = _early
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def install_rank_handlers() -> None:
    """SIGTERM and SIGUSR1 for a launched rank outside the training loop (`StopSignals` handles them inside);
    `t2t train` installs them first thing, before it imports torch.

    SIGTERM: before the loop there is nothing to save, and the rank dies of it as by default. After the loop it is
    ignored: the rank is about to report how the loop ended and exit, and a launcher that saw another rank
    fail sends its SIGTERM exactly then (the report, e.g. that a peer was lost, must not die with it).

    SIGUSR1: Slurm sends its pre-timeout signal once, up to 30 s early, and it can reach a rank that is still loading
    (a requeued job that starts near its limit, a model that takes minutes to load). A real two-node Slurm showed
    it: the ranks inherit the launchers' `trap '' USR1` and ignored it, and the job was killed at its limit instead
    of checkpointing. Now it is recorded, and the loop stops after its first step."""
    signal.signal(signal.SIGTERM, _outside_loop)
    signal.signal(signal.SIGUSR1, _record_early)


def _record_early(signum, frame) -> None:
    global _early
    _early = signum


def _outside_loop(signum, frame) -> None:
    if _loop_started:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# ----------------------------------------------------------------------------- ranks: watch the launchers

_LAUNCHER_MODULES = {
    "deepspeed.launcher.launch": "DeepSpeed's per-node launcher",
    "deepspeed.launcher.runner": "the deepspeed launcher",
    "torch.distributed.run": "torchrun",
    "torch.distributed.launch": "torch.distributed.launch",
}
_LAUNCHER_SCRIPTS = {"deepspeed": "the deepspeed launcher", "ds": "the deepspeed launcher", "torchrun": "torchrun"}


def launcher_kind(cmdline: list[str]) -> str | None:
    """What launcher a command line runs (torchrun, DeepSpeed's launchers), or None."""
    args = list(cmdline)
    if args and os.path.basename(args[0]).startswith("python"):  # python [options] (-m MODULE | SCRIPT) ...
        args = args[1:]
        while args and args[0].startswith("-") and args[0] != "-m":
            args = args[2:] if args[0] in ("-X", "-W", "-c") else args[1:]
        if args[:1] == ["-m"]:
            return _LAUNCHER_MODULES.get(args[1]) if len(args) > 1 else None
    return _LAUNCHER_SCRIPTS.get(os.path.basename(args[0])) if args else None


class LauncherWatch:
    """The launchers above this process; `start` polls them and calls `on_exit(description)` once one exits.

    Watched: the parent and each further ancestor while they are launchers (torchrun; DeepSpeed's per-node
    launcher and the `deepspeed` command above it), and the ancestors listed in T2T_LAUNCHER_PIDS. A listed
    pid that is not an ancestor any more has exited before this process looked: it counts as exited at once.
    """

    def __init__(self, interval: float = 1.0, environ: dict | None = None):
        import psutil

        self.interval = interval
        self.watched: list[tuple[object, str]] = []  # (psutil.Process or None when gone already, description)
        try:
            ancestors = psutil.Process().parents()
        except psutil.Error:
            return
        for p in ancestors:
            kind = launcher_kind(_cmdline(p))
            if kind is None:
                break
            self.watched.append((p, f"{kind} (pid {p.pid})"))
        by_pid = {p.pid: p for p in ancestors}
        for item in (environ if environ is not None else os.environ).get(LAUNCHER_PIDS, "").split(","):
            if item.strip().isdigit() and not any(p is not None and p.pid == int(item) for p, _ in self.watched):
                pid = int(item)
                self.watched.append((by_pid.get(pid), f"the process that launched the ranks (pid {pid})"))

    def gone(self) -> str | None:
        """The first watched launcher that has exited, or None."""
        for p, what in self.watched:
            if p is None or not _alive(p):
                return what
        return None

    def start(self, on_exit) -> "LauncherWatch":
        if self.watched:
            threading.Thread(target=self._run, args=(on_exit,), name="t2t-launcher-watch", daemon=True).start()
        return self

    def _run(self, on_exit) -> None:
        while (what := self.gone()) is None:
            time.sleep(self.interval)
        on_exit(what)


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _alive(p) -> bool:
    """Running, the same process (psutil compares start times), and not a zombie (exited, not yet reaped)."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_when_launcher_exits(rank: int, interval: float = 1.0) -> LauncherWatch:
    """Start a `LauncherWatch` that, once a launcher exits, says so and sends this rank SIGTERM."""

    def on_exit(what: str) -> None:
        print(f"t2t train: rank {rank}: {what} exited; stopping as on SIGTERM (the step finishes, then a "
              "checkpoint)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    return LauncherWatch(interval).start(on_exit)


# ----------------------------------------------------------------------------- parents: pass a stop on


class PassOnStop:
    """While active (main thread only), the first SIGTERM, SIGINT or SIGHUP is passed on to `proc` once, as
    SIGTERM (torchrun sends it on to every rank and waits for them). A second SIGINT kills `proc` and all
    processes under it at once and raises KeyboardInterrupt; further signals are otherwise ignored.

    The handler only signals: `received` says which signal came; the caller waits for `proc` and reports."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, proc):
        self.proc = proc
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "PassOnStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            self.stop()
        elif signum == signal.SIGINT:
            kill_tree(self.proc.pid)
            raise KeyboardInterrupt

    def stop(self) -> None:
        """Send `proc` SIGTERM (once it has exited, nothing)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process under it (the ranks of torchrun live in their own sessions)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
