"""A real Slurm cluster on this machine, with simulated GPU nodes, for the integration tests.

Debian's ``slurm-wlm`` (22.05) daemons are started as root from a temporary directory:
one ``slurmctld`` and one ``slurmd -N NAME`` per simulated node, every daemon on
localhost with its own port. GPUs are GRES backed by fake device files
(``DIR/gpus/NAME/nvidia0..``, symlinks to ``/dev/null``), so Slurm allocates them, counts
them and sets ``CUDA_VISIBLE_DEVICES`` exactly as on a real node. Clients (sbatch, srun, squeue,
submitit) find the cluster through ``SLURM_CONF`` (see :attr:`SlurmTestCluster.env`).

Every daemon this module starts is stopped by pid in :meth:`SlurmTestCluster.stop`
(also registered with ``atexit``, and the daemons get ``PR_SET_PDEATHSIG`` so a killed
test process does not leave them behind). ``munged`` is reused when one answers and is
only started -- and later stopped -- when none does.

Usage::

    cluster = SlurmTestCluster([SimNode("worker-5", 8, "rtx_a6000")], tmp_path)
    cluster.start()
    try:
        subprocess.run(["sinfo"], env={**os.environ, **cluster.env}, check=True)
    finally:
        cluster.stop()
"""

from __future__ import annotations

import atexit
import ctypes
import grp
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PARTITION = "gpu"
NODE_CPUS = 16  # declared, not real: SlurmdParameters=config_overrides
NODE_MEMORY_MB = 16000
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_LOG = Path("/var/log/munge/munged.log")

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_REQUIRED_BINARIES = ("slurmctld", "slurmd", "sinfo", "scontrol", "squeue", "sbatch", "srun", "scancel",
                      "munged", "munge")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Unix socket paths (slurmstepd puts one per step in SlurmdSpoolDir) must stay short.
_MAX_WORKDIR_LEN = 70
_NOT_IDLE_FIXABLE = {"DOWN", "INVAL", "DRAINED", "DRAINING", "DRAIN", "FAIL", "FAILING"}


@dataclass(frozen=True)
class SimNode:
    """One simulated GPU node: ``gpus`` GRES of type ``gres_type`` (e.g. ``rtx_a6000``)."""

    name: str
    gpus: int
    gres_type: str
    partition: str | None = None


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def slurm_available() -> tuple[bool, str]:
    """(True, "") when the test cluster can run here: Slurm + munge installed and we are root."""
    missing = [b for b in _REQUIRED_BINARIES if _which(b) is None]
    if missing:
        return False, (f"slurm-wlm/munge not installed (missing: {', '.join(missing)}); "
                       "run scripts/ensure-slurm.sh as root")
    if os.geteuid() != 0:
        return False, f"the Slurm test cluster must run as root (running as uid {os.geteuid()})"
    return True, ""


def _die_with_parent() -> None:  # preexec_fn: SIGTERM the daemon if the test process dies
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


def _free_ports(n: int) -> list[int]:
    """n distinct bindable TCP ports, below the kernel's ephemeral range (srun uses that one)."""
    ports: list[int] = []
    candidates = random.sample(range(20000, 32000), 2000)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"could not find {n} free TCP ports in 20000-32000")


def _make_fake_gpu_device(path: Path) -> None:
    # slurmd drops GRES files that are not character/block devices ("... is not a valid
    # character or block device, fix your gres.conf") and then sets no CUDA_VISIBLE_DEVICES.
    # A symlink to /dev/null stats as a char device; the index comes from the name's digits.
    if not path.is_symlink():
        path.unlink(missing_ok=True)
        path.symlink_to("/dev/null")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no such file)"
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _hostlist(first: int, count: int) -> str:
    return f"{first}" if count == 1 else f"[{first}-{first + count - 1}]"


class SlurmTestCluster:
    """slurmctld + one slurmd per :class:`SimNode`, all on localhost, state in ``workdir``."""

    def __init__(self, nodes: Sequence[SimNode], workdir: Path):
        if not nodes:
            raise ValueError("SlurmTestCluster needs at least one SimNode")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate node names in {names}")
        for n in nodes:
            for what, value in (("name", n.name), ("gres_type", n.gres_type), ("partition", n.partition)):
                if value is not None and not _NAME_RE.match(value):
                    raise ValueError(f"SimNode {n.name!r}: {what}={value!r} must match {_NAME_RE.pattern}")
            if n.gpus < 0:
                raise ValueError(f"SimNode {n.name!r}: gpus={n.gpus} must be >= 0")
        self.nodes: tuple[SimNode, ...] = tuple(nodes)
        self.workdir = Path(workdir).resolve()
        if len(str(self.workdir)) > _MAX_WORKDIR_LEN:
            raise ValueError(f"workdir {self.workdir} is longer than {_MAX_WORKDIR_LEN} characters; "
                             "Slurm's step sockets under it would exceed the Unix socket path limit")
        self.conf_path = self.workdir / "etc" / "slurm.conf"
        self.log_dir = self.workdir / "log"
        self._ctld: subprocess.Popen | None = None
        self._slurmds: dict[str, subprocess.Popen] = {}
        self._munged: subprocess.Popen | None = None
        self._started = False
        self._events: list[str] = []  # what start() did, for diagnostics()

    # ------------------------------------------------------------------ public API
    @property
    def env(self) -> dict[str, str]:
        """Environment to add to ``os.environ`` so Slurm clients talk to this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def start(self, timeout: float = 60) -> None:
        """Write the configs, start munged (if none answers), slurmctld and the slurmds,
        and wait until every node is IDLE. Raises RuntimeError (with diagnostics) otherwise;
        on any failure everything started so far is stopped again."""
        ok, reason = slurm_available()
        if not ok:
            raise RuntimeError(f"Slurm test cluster unavailable: {reason}")
        if self._started:
            raise RuntimeError("SlurmTestCluster.start() called twice")
        self._started = True
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        try:
            self._write_config()
            self._ensure_munge()
            self._start_slurmctld(deadline)
            for node in self.nodes:
                self._slurmds[node.name] = self._spawn(
                    "slurmd-" + node.name, [_which("slurmd"), "-D", "-N", node.name])
            self._wait_idle(deadline, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel remaining jobs, stop every daemon started here (by pid) and wait for them.
        Idempotent; never raises."""
        try:
            atexit.unregister(self.stop)
            if self._ctld is not None and self._ctld.poll() is None:
                self._cancel_all_jobs()
            procs = [*self._slurmds.values(), *([self._ctld] if self._ctld is not None else [])]
            self._slurmds.clear()
            self._ctld = None
            _terminate(procs)
            self._kill_leftover_job_processes()
        except Exception as e:  # noqa: BLE001 - teardown must go on
            self._events.append(f"stop: {e!r}")
        finally:
            if self._munged is not None:
                munged, self._munged = self._munged, None
                try:
                    _terminate([munged])
                except Exception as e:  # noqa: BLE001
                    self._events.append(f"stop munged: {e!r}")

    def node_states(self) -> dict[str, str]:
        """{node: state} from one ``sinfo`` call, upper case, sinfo's suffixes kept
        (``IDLE`` is idle and responding; ``IDLE*`` is not responding, ``DOWN*``, ``INVAL``, ...)."""
        out = self._client(["sinfo", "--noheader", "--Node", "--format=%N %T"], timeout=15)
        states: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1].upper()
        return states

    def diagnostics(self) -> str:
        """Tails of the slurmctld/slurmd (and munged) logs plus node reasons; never raises."""
        try:
            return self._diagnostics()
        except Exception as e:  # noqa: BLE001
            return f"(diagnostics failed: {e!r}; logs are in {self.log_dir})"

    def _diagnostics(self) -> str:
        parts = [f"== Slurm test cluster in {self.workdir} (SLURM_CONF={self.conf_path})"]
        if self._events:
            parts.append("== harness events\n" + "\n".join(self._events[-20:]))
        if self._ctld is not None and self._ctld.poll() is None:
            try:
                parts.append("== sinfo (node, state, reason)\n" + self._client(
                    ["sinfo", "--noheader", "--Node", "--format=%N %T %G %E"], timeout=10))
            except Exception as e:  # noqa: BLE001
                parts.append(f"== sinfo failed: {e}")
        for name, proc in [("slurmctld", self._ctld), *self._slurmds.items()]:
            if proc is not None and proc.poll() is not None:
                parts.append(f"== {name} (pid {proc.pid}) exited with {proc.returncode}")
        parts.append("== slurmctld.log (tail)\n" + _tail(self.log_dir / "slurmctld.log", 40))
        for node in self.nodes:
            log = self.log_dir / f"slurmd-{node.name}.log"
            parts.append(f"== slurmd-{node.name}.log (tail)\n" + _tail(log, 12))
        for out in sorted(self.log_dir.glob("*.out")) if self.log_dir.is_dir() else []:
            if out.stat().st_size:
                parts.append(f"== {out.name} (daemon stdout/stderr, tail)\n" + _tail(out, 15))
        return "\n".join(parts)

    def __enter__(self) -> SlurmTestCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ config
    def _write_config(self) -> None:
        etc, state, spool, run, gpus = (self.workdir / d for d in ("etc", "state", "spool", "run", "gpus"))
        for d in (etc, state, spool, run, gpus, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(1 + len(self.nodes))
        ctld_port, node_ports = ports[0], ports[1:]
        lines = [
            "# generated by tests/integration/slurm_harness.py",
            "ClusterName=clusterkit-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={spool}/%n",
            f"SlurmctldPidFile={run}/slurmctld.pid",
            f"SlurmdPidFile={run}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "SlurmdTimeout=30",
            "SlurmctldTimeout=30",
            "MessageTimeout=10",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=300",
            "MailProg=/bin/true",
            f"PlugStackConfig={etc}/plugstack.conf",
        ]
        gres = ["# generated by tests/integration/slurm_harness.py"]
        for node, port in zip(self.nodes, node_ports):
            line = (f"NodeName={node.name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                    f"CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN")
            if node.gpus:
                line += f" Gres=gpu:{node.gres_type}:{node.gpus}"
                devdir = gpus / node.name
                devdir.mkdir(exist_ok=True)
                for i in range(node.gpus):
                    _make_fake_gpu_device(devdir / f"nvidia{i}")
                gres.append(f"NodeName={node.name} Name=gpu Type={node.gres_type} "
                            f"File={devdir}/nvidia{_hostlist(0, node.gpus)}")
            lines.append(line)
            (spool / node.name).mkdir(exist_ok=True)
        lines.append(f"PartitionName={DEFAULT_PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        extra: dict[str, list[str]] = {}
        for node in self.nodes:
            if node.partition and node.partition != DEFAULT_PARTITION:
                extra.setdefault(node.partition, []).append(node.name)
        for part, members in extra.items():
            lines.append(f"PartitionName={part} Nodes={','.join(members)} MaxTime=INFINITE State=UP")
        # an empty plugstack.conf: keep the host's /etc/slurm SPANK plugins out of the test cluster
        (etc / "plugstack.conf").write_text("")
        (etc / "gres.conf").write_text("\n".join(gres) + "\n")
        self.conf_path.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, argv: list, *, user: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(
                [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env if env is not None else {**os.environ, **self.env},
                cwd=self.workdir, user=user, group=user, preexec_fn=_die_with_parent)
        self._events.append(f"started {name} pid {proc.pid}")
        return proc

    def _munge_answers(self) -> bool:
        try:
            return subprocess.run([_which("munge"), "-n"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=5).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _ensure_munge(self) -> None:
        if self._munge_answers():
            self._events.append("munged already running: reused")
            return
        munge_uid = pwd.getpwnam("munge").pw_uid
        munge_gid = grp.getgrnam("munge").gr_gid
        if not MUNGE_KEY.exists():
            subprocess.run([_which("mungekey"), "-c", "-k", str(MUNGE_KEY)], check=True, capture_output=True)
            self._events.append(f"created {MUNGE_KEY}")
        os.chown(MUNGE_KEY, munge_uid, munge_gid)
        os.chmod(MUNGE_KEY, 0o600)
        for d, mode in ((MUNGE_RUN_DIR, 0o755), (MUNGE_LOG.parent, 0o700), (Path("/var/lib/munge"), 0o711)):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, munge_uid, munge_gid)
            os.chmod(d, mode)
        env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        self._munged = self._spawn("munged", [_which("munged"), "--foreground"], user="munge", env=env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._munged.poll() is not None:
                raise RuntimeError(f"munged exited with {self._munged.returncode}\n{self.diagnostics()}")
            if self._munge_answers():
                return
            time.sleep(0.2)
        raise RuntimeError(f"munged started but does not answer `munge -n` after 15s\n{self.diagnostics()}")

    def _start_slurmctld(self, deadline: float) -> None:
        self._ctld = self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c"])
        while True:
            if self._ctld.poll() is not None:
                raise RuntimeError(f"slurmctld exited with {self._ctld.returncode} during startup\n"
                                   f"{self.diagnostics()}")
            try:
                if " is UP" in self._client(["scontrol", "ping"], timeout=10, check=False):
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurmctld did not answer `scontrol ping` in time\n{self.diagnostics()}")
            time.sleep(0.3)

    def _wait_idle(self, deadline: float, timeout: float) -> None:
        names = {n.name for n in self.nodes}
        states: dict[str, str] = {}
        last_resume = 0.0
        while True:
            for name, proc in [("slurmctld", self._ctld), *self._slurmds.items()]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} during startup\n"
                                       f"{self.diagnostics()}")
            try:
                states = self.node_states()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                self._events.append(f"sinfo failed: {e}")
            if names <= states.keys() and all(states[n] == "IDLE" for n in names):
                self._events.append("all nodes IDLE")
                return
            broken = sorted(n for n in names if states.get(n, "").rstrip("*~#!%$@^-+") in _NOT_IDLE_FIXABLE)
            if broken and time.monotonic() - last_resume > 2:
                last_resume = time.monotonic()
                r = self._client(["scontrol", "update", f"nodename={','.join(broken)}", "state=resume"],
                                 timeout=10, check=False)
                self._events.append(f"resumed {broken} ({ {n: states[n] for n in broken} }): {r.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm test nodes not all IDLE after {timeout:.0f}s: {states}\n"
                                   f"{self.diagnostics()}")
            time.sleep(0.5)

    # ------------------------------------------------------------------ teardown helpers
    def _cancel_all_jobs(self) -> None:
        try:
            ids = self._client(["squeue", "--noheader", "--format=%i"], timeout=10).split()
            if not ids:
                return
            self._client(["scancel", *ids], timeout=10, check=False)
            end = time.monotonic() + 15
            while time.monotonic() < end and self._client(["squeue", "--noheader", "--format=%i"], timeout=10).split():
                time.sleep(0.3)
        except Exception as e:  # noqa: BLE001 - teardown is best effort, the sweep below backs it up
            self._events.append(f"cancel on stop failed: {e}")

    def _kill_leftover_job_processes(self) -> None:
        """slurmstepd and job processes outlive slurmd; they carry our SLURM_CONF in their
        environment (inherited from our slurmd or propagated by sbatch), which identifies them."""
        marker = f"SLURM_CONF={self.conf_path}\0".encode()
        keep = {os.getpid()}
        pid = os.getppid()
        while pid > 1:  # never signal ourselves or an ancestor
            keep.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        victims = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in keep:
                continue
            try:
                if marker in (entry / "environ").read_bytes():
                    victims.append(int(entry.name))
            except OSError:
                continue
        if victims:
            self._events.append(f"killing leftover job processes {victims}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 3
            while victims and time.monotonic() < end:
                victims = [p for p in victims if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
                time.sleep(0.1)
            if not victims:
                return

    # ------------------------------------------------------------------ clients
    def _client(self, argv: list[str], *, timeout: float, check: bool = True) -> str:
        """Run a Slurm client against this cluster: stdout (check=True, raises on failure)
        or stdout + stderr (check=False)."""
        r = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], env={**os.environ, **self.env},
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, argv, r.stdout, r.stderr)
        return r.stdout + r.stderr if not check else r.stdout


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _terminate(procs: list[subprocess.Popen], grace: float = 10) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
