"""The one policy for starting or joining Ray.

A job joins the cluster it is given (`--ray-address`, else `$RAY_ADDRESS`) and otherwise starts a
private local Ray with `address="local"`: a bare `ray.init()` would silently join whatever cluster
a `ray start` left running on the machine, with its CPUs, its other jobs and its stale code.
A process already connected to Ray (the pipeline holds one session for all its steps) is left as is.
A step of a local `t2t sweep` that wants Ray joins the sweep's own Ray (`LOCAL_RAY_ENV`) instead of starting
a second one on the same cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from t2t.errors import UserError

LOCAL_RAY_ENV = "T2T_LOCAL_RAY"
"""The address of the Ray that a `t2t sweep` started on this machine, set for its steps' processes. A step that
wants Ray joins it, but it names no cluster: where `workers: 0`, targets and evaluation run in the step's own
process, as `t2t pipeline` runs them on one machine."""


def cluster_address(given: str | None) -> str | None:
    """The cluster to join (`given`, else $RAY_ADDRESS), or None for a private local Ray."""
    address = given or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        raise UserError(f"Ray address {address} is a dashboard (job API) address: submit with "
                        "launchers/submit_targets.sh, or give the cluster's GCS address (HOST:6379)")
    return address


def start_or_join(address: str | None, num_cpus: int | None) -> bool:
    """Join `address` (see `cluster_address`), else the local sweep's Ray (`LOCAL_RAY_ENV`), else start a local Ray
    with `num_cpus` CPUs (None: all the machine's); True if this call started or joined it (and so should shut it
    down), False if the process was already connected."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's notice that its token authentication is on, at every start: nothing a user of t2t acts on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = cluster_address(address)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    elif os.environ.get(LOCAL_RAY_ENV):
        ray.init(address=os.environ[LOCAL_RAY_ENV], logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def automatic_stays_here(address: str | None, gpus_per_worker: float) -> bool:
    """What `workers: 0` (automatic) means for a target job and for evaluation alike: one worker in the job's own
    process where no cluster is named (`address`, else RAY_ADDRESS) and the workers ask for no GPUs, since on one
    machine Ray's start-up and a model load per actor cost more than they gave (bench/BENCHMARKS.md); Ray workers
    otherwise."""
    return cluster_address(address) is None and gpus_per_worker <= 0


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Ray for the `with` block: joined or started here (and shut down after), or the caller's own."""
    import ray

    started = start_or_join(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
