"""A real two-node Slurm cluster on one machine, for the tests and by hand (tests/cluster/README.md).

Two "hosts" are two network namespaces, `t2t-node1` (10.77.0.11) and `t2t-node2` (10.77.0.12), joined by veth
pairs to a bridge in the root namespace (10.77.0.1), each with its own host name (a UTS namespace). munge (a fresh
key), slurmctld (root namespace, on the bridge's address) and one slurmd per namespace run from Debian's
`slurm-wlm`; each node resolves both node names through `/etc/netns/<namespace>/hosts`, which `ip netns exec` puts
in place of /etc/hosts for what it starts, so a job step on node1 reaches node2 by name, as on a real cluster. The
jobs share this machine's file system.

Nothing is sent to any address but those of the namespaces made here. `stop` removes every daemon, namespace,
link and file it made, also after a failed start.

    python tests/cluster/cluster.py start DIR     # then: export SLURM_CONF=DIR/etc/slurm.conf; sinfo
    python tests/cluster/cluster.py stop DIR
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BRIDGE = "t2tbr0"
BRIDGE_ADDR = "10.77.0.1"
NODES = {"node1": "10.77.0.11", "node2": "10.77.0.12"}
"""Node name → its address, each in its own network namespace `t2t-<name>`."""
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
            for node in NODES:  # each node its own network and its own host name, as hosts have
                self._daemon(["ip", "netns", "exec", namespace(node), "unshare", "--uts", "sh", "-c",
                              f'hostname {node} && exec slurmd -D -N {node} -f "$0"', str(self.conf)],
                             self.root / "log" / f"slurmd-{node}.out")
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

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
        with log.open("w") as out:
            self.daemons.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                 start_new_session=True))

    def _wait_idle(self, timeout: float) -> None:
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
        for node in NODES:  # job steps a slurmd left running in its namespace
            pids = subprocess.run(["ip", "netns", "pids", namespace(node)], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _kill(self.munge_socket.parent / "munged.pid", signal.SIGTERM)
        self.stop_network()

    @staticmethod
    def stop_network() -> None:
        for node in NODES:
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
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    cluster = Cluster(Path(sys.argv[2]))
    if sys.argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
        # The daemons belong to this process's children: leave them running, detached, for use by hand.
        sys.exit(0)
    cluster.stop()
