"""How a training rank ends besides finishing: a lost peer, named with the last step it finished, and the exit
itself (without interpreter finalization where gloo's threads could abort it). Stop signals are
`t2t.train.signals`'; `t2t train` (t2t/commands/train_cmd.py) only turns these into messages and exit codes."""

from __future__ import annotations

import logging
import os
import re
import sys

# What gloo, NCCL and the TCP store say when the process at the other end is gone, or (gloo's "Timed out waiting")
# has not answered within the process group's timeout: DeepSpeed's default, 10 min (DEEPSPEED_TIMEOUT, in minutes).
PEER_LOST = re.compile(r"Connection reset by peer|Connection closed by (?:remote )?peer|Broken pipe|"
                       r"Connection refused|Socket Timeout|NCCL communicator was aborted|remote process exited|"
                       r"Timed out waiting \d+ ?ms for (?:recv|send) operation|Application timeout caused pair closure",
                       re.IGNORECASE)


class PeerLost(RuntimeError):
    """torch.distributed lost another rank (it died or hung up) while this one trained; the original error is
    the `__cause__`."""

    def __init__(self, cause: str, step: int | None):
        super().__init__(f"lost contact with another rank{'' if step is None else f' after step {step}'} "
                         f"(did it die? {cause})")
        self.cause = cause
        """The short reason, e.g. "Connection reset by peer"."""
        self.step = step
        """The last optimizer step this rank finished (None: training never got that far)."""


def lost_peer(e: BaseException) -> str | None:
    """The short reason when `e` (or an error it came from) is torch.distributed losing another rank, else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RuntimeError) and (m := PEER_LOST.search(str(e))):
            line = str(e).splitlines()[0] if str(e) else ""
            line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[.../pair.cc:537] " source location
            line = line.split(". This is typically")[0].strip()
            return line if len(line) <= 160 else m.group(0)
        e = e.__cause__ or e.__context__
    return None


def leave(code: int) -> int:
    """Exit a launched rank without interpreter finalization, once its work is written and the process group
    is destroyed. Gloo's C++ worker threads can still hold work objects that ZeRO-3 kept referenced;
    finalizing them while the interpreter shuts down aborts the rank ("terminate called without an active
    exception", SIGABRT) after a successful run, and the launcher then reports the whole run as failed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
