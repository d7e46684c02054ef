"""What a load figure depends on, recorded beside it (issue 13 item 11).

Latency under load on a small machine depends on more than the server's code: the BLAS kernels
its model step runs on, how much of the cores the benchmark's own clients take, and whatever
else runs there (a training job, another test). ``Sampler`` watches all of that from its own
process, so the benchmark's event loops pay nothing for it:

* every ``interval`` seconds: the load average, the server's RSS and CPU time, and every
  process's CPU time (from /proc);
* at the end: CPU used in cores (CPU seconds / wall seconds) by the server, by the
  benchmark's clients (the process that started the sampler and its other children) and by
  everything else, with the busiest other processes named; the clients' share of the CPU
  that server and clients used together; the machine's cores, load average before, during and
  after, and the server's RSS over time.

    sampler = Sampler(server_pid); sampler.start(); ...; conditions = sampler.stop()

Run as a script it is the sampler process (``python benchmarks/conditions.py SERVER_PID
CLIENT_PID INTERVAL``): it samples until its standard input closes, then prints the JSON.
Only the standard library is imported here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), None)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0))}


def _processes() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds, command) of every process /proc shows."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
            fields = tail.split()
            ppid = int(fields[1])
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        out[int(name)] = (ppid, cpu, cmd or head.split("(", 1)[-1])
    return out


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return None


def _descendants(root: int, procs: dict[int, tuple[int, float, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += children.get(p, [])
    return seen


def sample_loop(server_pid: int, client_pid: int, interval: float, stop) -> dict:
    """Samples until ``stop()`` is true; returns the report (see the module docstring)."""
    me = os.getpid()
    first: dict[int, float] = {}   # CPU seconds when a process was first seen (0 if new)
    last: dict[int, float] = {}
    cmds: dict[int, str] = {}
    role: dict[int, str] = {}
    series = []
    t0 = time.monotonic()
    initial = True
    server_cpu0 = None
    while True:
        procs = _processes()
        server = _descendants(server_pid, procs)
        clients = _descendants(client_pid, procs) - server - {me}
        for pid, (_, cpu, cmd) in procs.items():
            if pid == me:
                continue
            first.setdefault(pid, cpu if initial else 0.0)
            last[pid] = cpu
            cmds.setdefault(pid, cmd)
            role.setdefault(pid, "server" if pid in server else
                            "clients" if pid in clients else "other")
        initial = False
        t = time.monotonic() - t0
        server_cpu = procs.get(server_pid, (0, 0.0, ""))[1]
        if server_cpu0 is None:
            server_cpu0 = server_cpu
        series.append({"t_s": round(t, 2), "load1": round(os.getloadavg()[0], 2),
                       "server_rss_mib": _rss_mib(server_pid),
                       "server_cpu_s": round(server_cpu - server_cpu0, 2)})
        if stop():
            break
        end = t0 + len(series) * interval
        while time.monotonic() < end and not stop():
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    wall = max(time.monotonic() - t0, 1e-9)
    used = {"server": 0.0, "clients": 0.0, "other": 0.0}
    per_pid = []
    for pid, cpu in last.items():
        d = max(0.0, cpu - first[pid])
        used[role[pid]] += d
        if role[pid] == "other" and d > 0.01 * wall:
            per_pid.append({"pid": pid, "cmd": cmds[pid][:160], "cores": round(d / wall, 3)})
    cores = os.cpu_count() or 1
    per_pid.sort(key=lambda p: -p["cores"])
    loads = [s["load1"] for s in series]
    return {
        "wall_s": round(wall, 1),
        "cpu_cores_used": {k: round(v / wall, 3) for k, v in used.items()},
        "client_cpu_share": (round(used["clients"] / (used["server"] + used["clients"]), 3)
                             if used["server"] + used["clients"] else None),
        "machine_busy_fraction": round(sum(used.values()) / wall / cores, 3),
        "other_processes": per_pid[:6],
        "load1_during": {"min": min(loads), "mean": round(sum(loads) / len(loads), 2),
                         "max": max(loads)},
        "samples": series,
    }


class Sampler:
    """Runs :func:`sample_loop` in a child process (``start``), returns its report
    (``stop``), with the machine and the load average before and after added."""

    def __init__(self, server_pid: int, interval: float = 1.0):
        self.server_pid = server_pid
        self.interval = interval
        self.proc: subprocess.Popen | None = None
        self.before: list[float] | None = None

    def start(self, load_before: list[float] | None = None) -> "Sampler":
        self.before = list(load_before or os.getloadavg())
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.server_pid), str(os.getpid()),
             str(self.interval)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def stop(self) -> dict:
        assert self.proc is not None
        out, _ = self.proc.communicate("", timeout=60)
        report = json.loads(out)
        return {"machine": machine(), "load_average_before": self.before, **report,
                "load_average_after": list(os.getloadavg())}


def rss_growth(samples: list[dict], warmup_s: float) -> dict:
    """Server RSS after warm-up: its first and last third's medians, the peak, and the
    growth between the two thirds (MiB); the least-squares slope in MiB per minute."""
    pts = [(s["t_s"], s["server_rss_mib"]) for s in samples
           if s["t_s"] >= warmup_s and s.get("server_rss_mib") is not None]
    if len(pts) < 3:
        return {"samples": len(pts)}

    def median(v):
        v = sorted(v)
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    third = max(1, len(pts) // 3)
    head, tail = [r for _, r in pts[:third]], [r for _, r in pts[-third:]]
    n = len(pts)
    mt, mr = sum(t for t, _ in pts) / n, sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (r - mr) for t, r in pts) / var if var else 0.0
    return {"warmup_s": warmup_s, "samples": n, "first_third_mib": round(median(head), 1),
            "last_third_mib": round(median(tail), 1),
            "growth_mib": round(median(tail) - median(head), 1),
            "peak_mib": round(max(r for _, r in pts), 1),
            "slope_mib_per_min": round(slope * 60, 2)}


if __name__ == "__main__":
    import select
    import threading

    server_pid, client_pid, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    closed = threading.Event()

    def watch_stdin() -> None:
        while True:
            r, _, _ = select.select([sys.stdin], [], [], 1.0)
            if r and not sys.stdin.read(1):
                closed.set()
                return

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps(sample_loop(server_pid, client_pid, interval, closed.is_set)))
