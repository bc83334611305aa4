"""What the benchmarks measure about processes: peak RSS (VmHWM) and TCP bytes through a server port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

TICK = os.sysconf("SC_CLK_TCK")

_BYTES = re.compile(r"\b(bytes_sent|bytes_received):(\d+)")
_PID = re.compile(r"pid=(\d+)")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process from /proc/<pid>/stat (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a live process in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Exit:
    """How a child ended, from the kernel's rusage: exact peak RSS and CPU time, no polling."""

    code: int
    peak_rss: int
    cpu_seconds: float


def wait_peak(process: subprocess.Popen, timeout: float) -> Exit:
    """Waits for a child (killing it after timeout seconds) and returns its exit code, peak RSS and CPU time."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return Exit(process.returncode, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)
        if time.monotonic() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            raise TimeoutError(f"process {process.args[:4]} did not exit within {timeout:.0f} s; killed it")
        time.sleep(0.05)


def python_program(args: list[str]) -> str:
    """What a python process runs: the module after -m (its last part), else the script's file name."""
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1].rsplit(".", 1)[-1]
        if not arg.startswith("-"):
            return os.path.basename(arg)
    return "python"


@dataclass
class TreePeaks:
    """Per-process peaks of every process seen in some process trees, grouped by a label per tree."""

    peaks: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)

    def labels(self) -> set[str]:
        return set(self.groups.values())

    def tree_peak(self, label: str) -> int:
        """Sum over the tree's programs of each program's largest peak (a helper respawned every round, like
        Flower's ClientApp, counts once, at its largest)."""
        return sum(self.by_name(label).values())

    def by_name(self, label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid, peak in self.peaks.items():
            if self.groups.get(pid) == label:
                out[self.names[pid]] = max(out.get(self.names[pid], 0), peak)
        return out


class TreeSampler(threading.Thread):
    """Polls VmHWM of each process in labelled trees (for systems that fork helpers we cannot wait4)."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="tree-sampler")
        self.interval = interval
        self.roots: dict[int, str] = {}
        self.result = TreePeaks()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def watch(self, pid: int, label: str) -> None:
        with self._lock:
            self.roots[pid] = label

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        with self._lock:
            roots = dict(self.roots)
        for root, label in roots.items():
            try:
                tree = [psutil.Process(root)]
                tree += tree[0].children(recursive=True)
            except psutil.Error:
                continue
            for proc in tree:
                peak = vm_hwm(proc.pid)
                if not peak:
                    continue
                try:
                    cmd = proc.cmdline()
                except psutil.Error:
                    continue
                r = self.result
                name = os.path.basename(cmd[0]) if cmd else proc.name()
                if len(cmd) > 1 and name.startswith("python"):
                    name = python_program(cmd[1:])
                r.names[proc.pid] = name
                r.groups[proc.pid] = label
                r.peaks[proc.pid] = max(r.peaks.get(proc.pid, 0), peak)

    def stop(self) -> TreePeaks:
        self._halt.set()
        self.join(timeout=5)
        self.sample()
        return self.result


class PortTraffic(threading.Thread):
    """TCP payload bytes through a listening port, per connection, from the kernel's tcp_info counters.

    Counts what actually crossed the sockets (protobuf, HTTP/2 and gRPC framing included), both ways. Live
    connections are polled with `ss -ti`; `ss -tiE` reports each socket's final counters as it is destroyed,
    so short-lived connections count in full too.
    """

    def __init__(self, port: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name=f"traffic-{port}")
        self.port = port
        self.interval = interval
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.owner_ok: dict[str, bool] = {}
        self._accept: Callable[[int], bool] | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.available = shutil.which("ss") is not None and shutil.which("stdbuf") is not None
        self._events = subprocess.Popen(["stdbuf", "-oL", "ss", "-tinEH"] if self.available else ["true"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._event_reader = threading.Thread(target=self._read_events, daemon=True, name=f"ss-events-{port}")
        self._event_reader.start()

    def only_from(self, accept: Callable[[int], bool]) -> None:
        """Counts only connections whose client end belongs to a process for which accept(pid) is true."""
        self._accept = accept

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def _record(self, local: str, peer: str, info: str) -> None:
        if not local.endswith(f":{self.port}"):
            return
        with self._lock:
            for key, value in _BYTES.findall(info):
                target = self.sent if key == "bytes_sent" else self.received
                target[peer] = max(target.get(peer, 0), int(value))

    def _read_events(self) -> None:
        header: list[str] | None = None
        for line in self._events.stdout:
            if not line.startswith((" ", "\t")):
                header = line.split()
            elif header is not None and len(header) >= 5:
                self._record(header[3], header[4], line)
                header = None

    def _owners(self) -> None:
        """Remembers, for each new client-side address, whether its process is one we count."""
        if self._accept is None or not self.available:
            return
        out = subprocess.run(["ss", "-tnpH", f"( dport = :{self.port} )"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = line.split()
            pid = _PID.search(line)
            if len(fields) >= 4 and pid and fields[3] not in self.owner_ok:
                self.owner_ok[fields[3]] = self._accept(int(pid.group(1)))

    def sample(self) -> None:
        if not self.available:
            return
        self._owners()
        out = subprocess.run(["ss", "-tinH", f"( sport = :{self.port} )"], capture_output=True, text=True).stdout
        header: list[str] | None = None
        for line in out.splitlines():
            if not line.startswith((" ", "\t")):
                header = line.split()
            elif header is not None and len(header) >= 5:
                self._record(header[3], header[4], line)

    def stop(self) -> tuple[int, int, int]:
        """(bytes the server sent, bytes it received, bytes of connections whose owner was never seen)."""
        if not self._halt.is_set():
            self._halt.set()
            if self.is_alive():
                self.join(timeout=5)
            self.sample()
            time.sleep(0.2)
        self._events.terminate()
        self._events.wait()
        self._event_reader.join(timeout=5)
        with self._lock:
            peers = set(self.sent) | set(self.received)
            if self._accept is None:
                counted, unknown = peers, set()
            else:
                counted = {p for p in peers if self.owner_ok.get(p)}
                unknown = {p for p in peers if p not in self.owner_ok}
            total = lambda table, chosen: sum(table.get(p, 0) for p in chosen)  # noqa: E731
            return (total(self.sent, counted), total(self.received, counted),
                    total(self.sent, unknown) + total(self.received, unknown))


def machine_summary() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = psutil.virtual_memory()
    return (f"{os.cpu_count()} vCPU ({cpu}), {ram.total / 2**30:.1f} GiB RAM "
            f"({ram.available / 2**30:.1f} GiB available at start), load average {os.getloadavg()[0]:.2f}")
