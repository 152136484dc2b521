"""How a t2t program runs as a process: what every verb of `t2t` and every job of a sweep shares.

One line for bad input (a `UserError`, or a directory the machine will not let t2t write: exit 2), the traceback
for a bug, SIGTERM and Ctrl-C unwinding so that finished work is kept (143, 130), INFO logging, and DeepSpeed's
CPU-accelerator notice dropped where CPU is what t2t means to run on.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from typing import Callable

from t2t.errors import UserError

UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
"""Errors of writing where the machine does not let t2t write: a user error, not a bug (`-v` keeps the traceback)."""


class Terminated(BaseException):
    """SIGTERM reached a verb that has no handler of its own: unwind (closing Ray, writing nothing half) and exit."""


def _terminate(signum, frame) -> None:
    raise Terminated


class _ExpectedCpuAccelerator(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect
    it." on a machine with no GPU: there CPU is what t2t means to run on (one rank per machine, fp32 where bf16 would be
    emulated), so the line tells the user nothing, and every command that imports DeepSpeed printed it. It stays where
    torch or the kernel sees an NVIDIA GPU DeepSpeed did not pick: that is worth acting on. DeepSpeed's other
    warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Setting accelerator to CPU."):
            return True
        import glob

        import torch  # DeepSpeed imported it before it warns

        return torch.cuda.device_count() > 0 or bool(glob.glob("/dev/nvidia[0-9]*"))


def quiet_expected_cpu_accelerator() -> None:
    """Install `_ExpectedCpuAccelerator` on DeepSpeed's logger (before DeepSpeed is imported; once per process)."""
    ds_log = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ExpectedCpuAccelerator) for f in ds_log.filters):
        ds_log.addFilter(_ExpectedCpuAccelerator())


def run_verb(verb: str, call: Callable[[], int | None], verbose: bool = False) -> int:
    """Run `call` as the process's verb `verb` and return its exit code (see the module docstring)."""
    quiet_expected_cpu_accelerator()
    # By default SIGTERM kills at once: no `finally` runs, and a local Ray this process started is left behind.
    # Verbs with their own handling (training ranks, `launch_local` while it trains) replace this one.
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(call() or 0)
    except UserError as e:
        # Bad input: one clear line, no traceback from deep inside. Any other exception is a bug: its traceback stays.
        print(f"t2t {verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in UNWRITABLE or verbose:
            raise
        # A directory the user pointed at that cannot be written: theirs to fix, so one line naming it.
        print(f"t2t {verb}: error: cannot write {e.filename or 'a file'}: {e.strerror} (check the recipe's "
              "run_dir, data.shards_dir and eval.out_dir, or the --out given)", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        print(f"t2t {verb}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; finished work is "
              "kept, rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
