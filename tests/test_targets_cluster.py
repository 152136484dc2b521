"""The cluster path: a Ray head on loopback, `launchers/submit_targets.sh` (`ray job submit`), the head stopped.

The head runs as `ray start --head --block` in its own process group with its own temp dir, and is
stopped through that process group rather than `ray stop`, which would stop every Ray instance on
the machine; the private temp dir keeps other `ray.init()` calls here from joining it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from t2t.data.corpus import iter_texts
from t2t.data.manifest import read_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for_dashboard(url: str, head: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the Ray dashboard at {url} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def stop_head(head: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it shuts its node down), then SIGKILL to whatever is left in its group."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=10)


def test_ray_job_submit_to_a_loopback_head(tiny_model_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    texts = [t.text for _, t in zip(range(40), iter_texts(REPO / "data/corpus/wiki_sentences_60k.txt.gz"))]
    corpus.write_text("\n".join(texts) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir), "max_length": 48},
        "data": {"corpus": str(corpus), "shards_dir": str(tmp_path / "shards")},
        "targets": {"shard_size": 16, "workers": 2},
    }))
    gcs, dashboard, *more = free_ports(9)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    ray_tmp = Path(tempfile.mkdtemp(prefix="t2tray"))  # short: Ray's socket paths live under it
    log = tmp_path / "head.log"
    with open(log, "w") as log_file:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--ray-client-server-port={more[0]}",
             f"--dashboard-agent-listen-port={more[1]}", f"--dashboard-agent-grpc-port={more[2]}",
             f"--metrics-export-port={more[3]}", f"--runtime-env-agent-port={more[4]}",
             f"--node-manager-port={more[5]}", f"--object-manager-port={more[6]}", f"--temp-dir={ray_tmp}",
             "--disable-usage-stats"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        wait_for_dashboard(address, head, log)
        job = subprocess.run(
            ["bash", str(REPO / "launchers/submit_targets.sh"), str(recipe), "1", "--set", "targets.workers=2"],
            env={**env, "RAY_ADDRESS": address, "T2T_PYTHON": sys.executable}, cwd=tmp_path,
            capture_output=True, text=True, timeout=300)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "succeeded" in job.stdout + job.stderr
        manifest = read_manifest(tmp_path / "shards" / "stage1")
        assert manifest["complete"] and manifest["samples"] == 40 and len(manifest["shards"]) == 3
        assert "40 samples in 3 shards" in job.stdout  # the job's own summary, streamed back by ray job submit
    finally:
        stop_head(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
