"""A real two-node Slurm cluster, and a Ray cluster on the same two nodes, on one machine, for the tests and by hand
(tests/cluster/README.md).

Two "hosts" are two network namespaces, `t2t-node1` (10.77.0.11) and `t2t-node2` (10.77.0.12), joined by veth
pairs to a bridge in the root namespace (10.77.0.1), each with its own host name (a UTS namespace). munge (a fresh
key), slurmctld (root namespace, on the bridge's address) and one slurmd per namespace run from Debian's
`slurm-wlm`; each node resolves both node names through `/etc/netns/<namespace>/hosts`, which `ip netns exec` puts
in place of /etc/hosts for what it starts, so a job step on node1 reaches node2 by name, as on a real cluster. The
jobs share this machine's file system.

`Cluster.start_ray` adds Ray: `ray start --head` on node1 (GCS on 10.77.0.11:6379, the job API on :8265),
`ray start --address` on node2, each node with its own temp dir and host name.

Nothing is sent to any address but those of the namespaces made here. `stop` removes every daemon, namespace,
link and file it made, also after a failed start.

    python tests/cluster/cluster.py start DIR [--ray]   # then: export SLURM_CONF=DIR/etc/slurm.conf; sinfo
    python tests/cluster/cluster.py stop DIR
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BRIDGE = "t2tbr0"
BRIDGE_ADDR = "10.77.0.1"
NODES = {"node1": "10.77.0.11", "node2": "10.77.0.12"}
"""Node name → its address, each in its own network namespace `t2t-<name>`."""
RAY_GCS_PORT = 6379
RAY_JOBS_PORT = 8265
RAY_CPUS = {"node1": 2, "node2": 1}
"""What each node offers Ray: node1 room for a second worker, so that work from a lost node2 can move there."""
NEEDED = ("ip", "munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo")
"""What must be installed (`apt-get install slurm-wlm munge iproute2`)."""


class ClusterUnavailable(RuntimeError):
    """The cluster could not start; the message says what was missing or failed."""


def namespace(node: str) -> str:
    return f"t2t-{node}"


class Cluster:
    """The cluster's state directory `root`: etc/slurm.conf, munge's key and socket, each daemon's spool and log."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.daemons: list[subprocess.Popen] = []
        self.ray_nodes: dict[str, subprocess.Popen] = {}
        self.ray_dirs: dict[str, Path] = {}

    @property
    def env_overrides(self) -> dict[str, str]:
        """What Slurm's commands need in their environment to talk to this cluster."""
        return dict(SLURM_CONF=str(self.conf))

    @property
    def env(self) -> dict[str, str]:
        """This process's environment, talking to this cluster."""
        return dict(os.environ, **self.env_overrides)

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 60) -> "Cluster":
        missing = [tool for tool in NEEDED if shutil.which(tool) is None]
        if missing:
            raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge iproute2)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("network namespaces and Slurm's daemons need root")
        try:
            self._network()
            self._munge()
            self._slurm_conf()
            self._daemon(["slurmctld", "-D", "-f", str(self.conf)], self.root / "log" / "slurmctld.out")
            for node in NODES:
                self.start_slurmd(node)
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_slurmd(self, node: str) -> None:
        """`slurmd -N node` in the node's namespace, with its own host name, as hosts have (again, after
        `kill_node`: the node registers and returns to service by itself, `ReturnToService=2`)."""
        self._daemon(["ip", "netns", "exec", namespace(node), "unshare", "--uts", "sh", "-c",
                      f'hostname {node} && exec slurmd -D -N {node} -f "$0"', str(self.conf)],
                     self.root / "log" / f"slurmd-{node}.out")

    def _network(self) -> None:
        self.stop_network()  # what a killed earlier run left behind
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        hosts = "127.0.0.1 localhost\n" + "".join(f"{addr} {node}\n" for node, addr in NODES.items())
        for i, (node, addr) in enumerate(NODES.items(), start=1):
            ns, veth = namespace(node), f"t2tveth{i}"
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "route", "add", "default", "via", BRIDGE_ADDR])
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)

    def _munge(self) -> None:
        d = self.munge_socket.parent
        d.mkdir(parents=True, exist_ok=True)
        key = d / "munge.key"
        run(["mungekey", "--create", "--keyfile", str(key), "--force"])
        key.chmod(0o600)
        run(["munged", "--force", "--key-file", str(key), "--socket", str(self.munge_socket),
             "--pid-file", str(d / "munged.pid"), "--log-file", str(d / "munged.log"), "--seed-file",
             str(d / "munged.seed")])

    def _slurm_conf(self) -> None:
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        nodes = "".join(f"NodeName={node} NodeAddr={addr} CPUs={cpus} RealMemory=1000 State=UNKNOWN\n"
                        for node, addr in NODES.items())
        self.conf.write_text(f"""\
ClusterName=t2t
SlurmctldHost={socket.gethostname().split('.')[0]}({BRIDGE_ADDR})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=60
KillWait=10
SlurmdTimeout=15
StateSaveLocation={self.root / 'state'}
SlurmctldPidFile={self.root / 'state' / 'slurmctld.pid'}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdSpoolDir={self.root / 'state' / 'slurmd-%n'}
SlurmdPidFile={self.root / 'state' / 'slurmd-%n.pid'}
SlurmdLogFile={self.root / 'log' / 'slurmd-%n.log'}
{nodes}PartitionName=cpu Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")
        (self.root / "etc" / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")

    def _daemon(self, cmd: list[str], log: Path) -> None:
        with log.open("a") as out:
            self.daemons.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                 start_new_session=True))

    def wait_idle(self, timeout: float) -> None:
        """Until both nodes are idle in Slurm's view; fails at once if a daemon exited."""
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise ClusterUnavailable(f"{' '.join(daemon.args[-5:])} exited with {daemon.returncode}; "
                                             f"see {self.root / 'log'}")
            done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
            states = done.stdout.strip()
            if done.returncode == 0 and sorted(states.splitlines()) == [f"{n} idle" for n in NODES]:
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"the nodes were not idle within {timeout:.0f} s (sinfo: {states or 'no answer'}); "
                                 f"see {self.root / 'log'}")

    # ------------------------------------------------------------------ Ray

    @property
    def ray_address(self) -> str:
        """The Ray job API, for `ray job submit` and launchers/submit_*.sh (RAY_ADDRESS)."""
        return f"http://{NODES['node1']}:{RAY_JOBS_PORT}"

    @property
    def ray_env(self) -> dict[str, str]:
        """This process's environment, submitting Ray jobs to this cluster."""
        return dict(os.environ, RAY_ADDRESS=self.ray_address, RAY_AUTH_MODE="disabled")

    def start_ray(self, node_env: dict[str, dict[str, str]] | None = None, timeout: float = 120) -> "Cluster":
        """Ray on both nodes (`node_env`: extra environment for a node's Ray, which its workers inherit); returns
        once both nodes are alive in the head's view."""
        head = f"{NODES['node1']}:{RAY_GCS_PORT}"
        for node, addr in NODES.items():
            role = ["--head", f"--port={RAY_GCS_PORT}", "--include-dashboard=true", f"--dashboard-host={addr}",
                    f"--dashboard-port={RAY_JOBS_PORT}"] if node == "node1" else [f"--address={head}"]
            self.ray_nodes[node] = self.start_ray_node(node, role, (node_env or {}).get(node, {}))
        deadline = time.monotonic() + timeout
        alive = []
        while time.monotonic() < deadline:
            for node, proc in self.ray_nodes.items():
                if proc.poll() is not None:
                    raise ClusterUnavailable(f"ray start on {node} exited with {proc.returncode}; see "
                                             f"{self.root / 'log' / f'ray-{node}.out'}")
            # `ray start` says it blocks once its node is up; only then ask the head (a Python process each time)
            logs = [(self.root / "log" / f"ray-{node}.out").read_text() for node in NODES]
            if all("will now block forever" in log for log in logs):
                alive = self.ray_alive()
                if sorted(alive) == sorted(NODES.values()):
                    return self
            time.sleep(1)
        raise ClusterUnavailable(f"Ray's nodes were not both up within {timeout:.0f} s (alive: {alive}); see "
                                 f"{self.root / 'log'}/ray-*.out")

    def start_ray_node(self, node: str, role: list[str], env: dict[str, str]) -> subprocess.Popen:
        # Ray's socket paths live under its temp dir and must stay short, so not under `root`.
        self.ray_dirs[node] = Path(tempfile.mkdtemp(prefix=f"t2t-ray-{node}-"))
        with (self.root / "ray-dirs").open("a") as listed:  # for a `stop` from another process
            listed.write(f"{self.ray_dirs[node]}\n")
        ray = Path(sys.executable).parent / "ray"
        cmd = [str(ray), "start", "--block", *role, f"--node-ip-address={NODES[node]}", f"--num-cpus={RAY_CPUS[node]}",
               "--num-gpus=0", f"--temp-dir={self.ray_dirs[node]}", "--disable-usage-stats"]
        log = self.root / "log" / f"ray-{node}.out"
        with log.open("w") as out:
            return subprocess.Popen(["ip", "netns", "exec", namespace(node), "unshare", "--uts", "sh", "-c",
                                     f'hostname {node} && exec "$@"', "sh", *cmd], stdout=out,
                                    stderr=subprocess.STDOUT, env={**self.ray_env, **env}, start_new_session=True)

    def ray_alive(self) -> list[str]:
        """The addresses of the Ray nodes the head counts alive (empty while it does not answer)."""
        probe = ("import ray.util.state as s; print(' '.join(n.node_ip for n in s.list_nodes("
                 f"address='{NODES['node1']}:{RAY_GCS_PORT}') if n.state == 'ALIVE'))")
        done = subprocess.run([sys.executable, "-c", probe], env=self.ray_env, capture_output=True, text=True)
        return done.stdout.split() if done.returncode == 0 else []

    def ray_actors(self, class_name: str) -> list[tuple[str, int]]:
        """(node address, restarts) of every actor of `class_name` this Ray cluster has run, alive or dead, sorted."""
        probe = ("import sys, ray.util.state as s; gcs = sys.argv[1]; "
                 "where = {n.node_id: n.node_ip for n in s.list_nodes(address=gcs)}; "
                 "print([(where[a.node_id], a.num_restarts) for a in s.list_actors("
                 "address=gcs, filters=[('class_name', '=', sys.argv[2])], detail=True)])")
        done = subprocess.run([sys.executable, "-c", probe, f"{NODES['node1']}:{RAY_GCS_PORT}", class_name],
                              env=self.ray_env, capture_output=True, text=True, check=True)
        return sorted(ast.literal_eval(done.stdout.strip()))

    def kill_node(self, node: str) -> None:
        """Kill every process in `node`'s namespace at once (its slurmd, its Ray, its job steps), as a power cut."""
        pids = subprocess.run(["ip", "netns", "pids", namespace(node)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for daemon in [d for d in self.daemons if str(d.pid) in pids]:  # its slurmd: gone, start_slurmd brings it back
            daemon.wait()
            self.daemons.remove(daemon)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Cancel every job, stop every daemon, remove the network; the state directory stays for its logs."""
        if self.conf.is_file():
            try:
                subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=10)
            except subprocess.TimeoutExpired:
                pass  # slurmctld is not there to ask
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in reversed(self.daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        self.daemons.clear()
        for pid_file in self.root.glob("state/*.pid"):  # daemons started by another process (`cluster.py start`)
            _kill(pid_file, signal.SIGTERM)
        for node in NODES:  # job steps a slurmd left running in its namespace, what Ray left
            self.kill_node(node)
        for proc in self.ray_nodes.values():
            proc.wait()
        self.ray_nodes.clear()
        listed = self.root / "ray-dirs"
        for ray_dir in {*self.ray_dirs.values(), *(listed.read_text().split() if listed.is_file() else [])}:
            shutil.rmtree(ray_dir, ignore_errors=True)
        listed.unlink(missing_ok=True)
        _kill(self.munge_socket.parent / "munged.pid", signal.SIGTERM)
        self.stop_network()

    @staticmethod
    def stop_network() -> None:
        for i, node in enumerate(NODES, start=1):
            # The kernel frees a namespace, and the veth in it, only some time after its last process died: delete
            # the pair from this side now, so that a start right after a stop finds the names free.
            subprocess.run(["ip", "link", "del", f"t2tveth{i}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", namespace(node)], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace(node), ignore_errors=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def _kill(pid_file: Path, sig: int) -> None:
    try:
        os.kill(int(pid_file.read_text().strip()), sig)
    except (OSError, ValueError):  # no file, no such process, or not a number
        pass


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterUnavailable(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("start", "stop") or sys.argv[3:] not in ([], ["--ray"]):
        sys.exit(__doc__)
    cluster = Cluster(Path(sys.argv[2]))
    if sys.argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
        if sys.argv[3:]:
            cluster.start_ray()
            print(f"export RAY_ADDRESS={cluster.ray_address} RAY_AUTH_MODE=disabled")
        # The daemons belong to this process's children: leave them running, detached, for use by hand.
        sys.exit(0)
    cluster.stop()
