"""The `t2t` command line: one verb per job.

    t2t pipeline [--config R]                 the whole recipe end to end, resumable (default: recipes/demo.yaml)
    t2t sweep --config R --grid KEY=V1,V2     a grid of pipelines on Ray, identical steps shared, one table
    t2t targets --config R --stage NAME       precompute a stage's sparse targets into WebDataset shards (Ray)
    t2t train --config R --stage NAME         one rank of DeepSpeed ZeRO-3 training (under torchrun/deepspeed)
    t2t export --config R --stage NAME        consolidate the newest checkpoint into a model directory
    t2t eval --model DIR [DIR...]             mteb tasks in parallel on Ray workers
    t2t tfidf --corpus C --out DIR            a TF-IDF baseline model directory for `t2t eval`
    t2t plan --config R --nodes N --gpus-per-node G   memory and time of a cluster run
    t2t inspect --model DIR "a text" ...      tokens an embedding points to
    t2t import FILE.gguf --out DIR            a pretrained GGUF backbone → a Hugging Face directory
    t2t config --config recipes/demo.yaml     print the validated recipe (--explain [SECTION]: what each field means)

Each verb lives in its own module under `t2t.commands` and registers its parser there; heavy
imports (torch, ray, deepspeed) happen only inside the verb that needs them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys

from t2t.errors import UserError

VERBS = [
    "t2t.commands.config_cmd",
    "t2t.commands.inspect_cmd",
    "t2t.commands.import_cmd",
    "t2t.commands.eval_cmd",
    "t2t.commands.tfidf_cmd",
    "t2t.commands.targets_cmd",
    "t2t.commands.train_cmd",
    "t2t.commands.export_cmd",
    "t2t.commands.plan_cmd",
    "t2t.commands.pipeline_cmd",
    "t2t.commands.sweep_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2t", description="Text2Token: decoder LLMs into text embedders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERBS:
        importlib.import_module(name).register(sub)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_expected_cpu_accelerator()
    # By default SIGTERM kills at once: no `finally` runs, and a local Ray this process started is left behind.
    # Verbs with their own handling (training ranks, `launch_local` while it trains) replace this one.
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        # Bad input: one clear line, no traceback from deep inside. Any other exception is a bug: its traceback stays.
        print(f"t2t {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in UNWRITABLE or args.verbose:
            raise
        # A directory the user pointed at that cannot be written: theirs to fix, so one line naming it.
        print(f"t2t {args.verb}: error: cannot write {e.filename or 'a file'}: {e.strerror} (check the recipe's "
              "run_dir, data.shards_dir and eval.out_dir, or the --out given)", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        print(f"t2t {args.verb}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; finished work is "
              "kept, rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
