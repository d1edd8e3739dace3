"""A real one-node SLURM cluster for the tests, started and stopped by the test session.

The fixture writes slurm.conf into a temporary folder (one node with 2 CPUs, no cgroups, no
accounting), creates a munge key, starts munged, slurmctld and slurmd as this session's own
processes and stops exactly those processes (by pid) at the end, after cancelling every job it
ran. It needs root (slurmd starts job steps as their user) and Debian's slurmctld, slurmd,
slurm-client and munge packages (`make install` as root installs them); without either the
tests that use it are skipped with that reason. Nothing outside the temporary folder is touched:
the daemons talk over their own ports and munge socket, and clients find them via SLURM_CONF.

    .venv/bin/python tests/slurm_cluster.py     # a cluster for trying things by hand (Ctrl-C stops it)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
# where Debian puts the daemons; a non-login root shell may not have them on PATH
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_requirement() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a real SLURM cluster needs root (slurmd runs jobs as their user)"
    absent = [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p, path=SEARCH_PATH) is None]
    if absent:
        return (f"SLURM/munge programs missing ({', '.join(absent)}): as root, `make install` or "
                "apt-get install slurmctld slurmd slurm-client munge")
    return None


def _die_with_parent() -> None:
    """Runs in each daemon before exec: if the test session is killed outright, the kernel stops
    the daemon too (PR_SET_PDEATHSIG), so no cluster outlives its tests."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = 2
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for clients (sbatch, genlab-train -m hydra/launcher=slurm, ...)."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SEARCH_PATH}

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def write_config(self) -> None:
        r = self.root
        for d in ("state", "spool"):
            (r / d).mkdir()
        # munge checks that the key is private to its owner and that every folder on the path
        # to its socket can be entered by everyone
        r.chmod(0o755)
        fd = os.open(r / "munge.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        os.write(fd, os.urandom(1024))
        os.close(fd)
        host = socket.gethostname()
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        self.conf.write_text(f"""\
ClusterName=genlabtest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={r}/munge.socket,cred_expire=10
# look at pending (e.g. requeued) jobs every few seconds rather than every minute
SchedulerParameters=sched_interval=5,bf_interval=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
NodeName={host} CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            [shutil.which(name, path=SEARCH_PATH), *args], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            start_new_session=True)  # Ctrl-C in pytest reaches only pytest
        log.close()

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        r = self.root
        self._start("munged", "--foreground", f"--key-file={r}/munge.key",
                    f"--socket={r}/munge.socket", f"--pid-file={r}/munged.pid",
                    f"--log-file={r}/munged.log", f"--seed-file={r}/munged.seed")
        self._wait(lambda: (r / "munge.socket").exists(), timeout, "munged to open its socket")
        self._start("slurmctld", "-D")
        self._start("slurmd", "-D")
        self._wait(self._idle, timeout, "the node to be idle (sinfo)")

    def _idle(self) -> bool:
        out = self.run("sinfo", "-h", "-p", self.partition, "-o", "%t", check=False).split()
        return out == ["idle"]

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                                 for p in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")))
                raise RuntimeError(f"SLURM test cluster: waited for {what}; "
                                   f"{'exited: ' + ', '.join(dead) if dead else 'timed out'}\n{logs}")
            time.sleep(0.5)

    def jobs(self) -> list[str]:
        """Ids of the jobs slurmctld still runs or holds (pending, running, completing)."""
        return self.run("squeue", "-h", "-o", "%i", check=False).split()

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started, newest first."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--partition={self.partition}", check=False)
            deadline = time.monotonic() + 60  # job steps get SIGTERM, then SIGKILL after KillWait
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(1)
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster for the whole session; yields the SlurmCluster (its .env holds
    SLURM_CONF, its .partition the partition name)."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="genlab-slurm-")))
    # No SIGTERM handler of our own: it would stay installed for the whole session and take the
    # SIGTERM that other tests send their in-process runs. A pytest killed by a CI timeout takes
    # the daemons with it (PR_SET_PDEATHSIG); only the temporary folder stays behind.
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


if __name__ == "__main__":
    reason = missing_requirement()
    if reason:
        raise SystemExit(reason)
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="genlab-slurm-")))
    try:
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}   # partition {cluster.partition}; Ctrl-C stops it")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
