"""The CPU share a container may use and the CPU time it used, from its cgroup (pure: files only).

In a pod with a CPU quota on a large host, the affinity mask still lists every host thread and
/proc/stat counts every tenant: an estimate made from them charges the pod for the host. The
cgroup says what the pod may use (`cpu.max` in v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` in
v1; the tightest quota of the cgroup and its ancestors) and what it used (`cpu.stat`
`usage_usec` in v2, `cpuacct.usage` in ns in v1).

The cgroup is found as the kernel names it: this process's line in /proc/self/cgroup, and the
mount of that hierarchy in /proc/self/mountinfo (whose root field is stripped from the path, as
in a container with its own cgroup namespace). Every path is read under `root`, so tests lay
out a fake /proc and /sys/fs/cgroup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CgroupCpu", "cgroup_cpu", "cgroup_util", "in_container"]


@dataclass(frozen=True)
class CgroupCpu:
    """This process's cgroup: its CPU quota (`quota_cpus` CPUs' worth of time per period; None
    where it has none) and where its own CPU time is read (`usage_file`, in `usage_unit_s`
    seconds per unit)."""

    quota_cpus: float | None
    quota_file: Path | None
    usage_file: Path
    usage_unit_s: float  # 1e-6 for v2 usage_usec, 1e-9 for v1 cpuacct.usage

    def usage_s(self) -> float:
        """CPU seconds the cgroup has used since it was made."""
        text = self.usage_file.read_text()
        if self.usage_file.name == "cpu.stat":
            fields = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
            return int(fields["usage_usec"]) * self.usage_unit_s
        return int(text.strip()) * self.usage_unit_s


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _mounts(root: Path) -> list[tuple[str, str, str, set[str]]]:
    """[(mount root, mount point, fstype, super options)] of the cgroup mounts."""
    out = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        out.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return out


def _dir(root: Path, mount: tuple[str, str, str, set[str]], path: str) -> Path:
    """The directory of cgroup `path` (as /proc/self/cgroup names it) under its mount."""
    rel = PurePosixPath(path)
    base = PurePosixPath(mount[0])
    if base != PurePosixPath("/") and (rel == base or base in rel.parents):
        rel = rel.relative_to(base)  # a cgroup namespace: the mount's root is the container's
    where = root / mount[1].lstrip("/") / str(rel).lstrip("/")
    # a container without its own cgroup namespace sees the host's path but has its own
    # cgroup mounted at the mount point: then the mount point is its cgroup
    return where if where.is_dir() else root / mount[1].lstrip("/")


def _chain(leaf: Path, top: Path) -> list[Path]:
    """`leaf` and its ancestors up to the mount point `top` (quotas nest: the tightest wins)."""
    out = [leaf]
    while out[-1] != top and top in out[-1].parents:
        out.append(out[-1].parent)
    return out


def _v2_quota(d: Path) -> float | None:
    parts = (_read(d / "cpu.max") or "").split()  # "QUOTA PERIOD" or "max PERIOD"
    if len(parts) != 2 or parts[0] == "max":
        return None
    return int(parts[0]) / int(parts[1])


def _v1_quota(d: Path) -> float | None:
    quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def _tightest(dirs: list[Path], read: Callable[[Path], float | None]) -> tuple[float, Path] | None:
    found = [(q, d) for d in dirs if (q := read(d)) is not None]
    return min(found, key=lambda f: f[0]) if found else None


def cgroup_cpu(root: Path = Path("/")) -> CgroupCpu | None:
    """This process's cgroup (v1 cpu controller, else v2): its quota, if any, and its own CPU
    time; None where its CPU time cannot be read (no cgroup files: macOS, a sandbox)."""
    try:
        return _find(root)
    except (OSError, ValueError, KeyError, IndexError):
        return None  # an unreadable or unexpected layout: the affinity mask is the fallback


def _find(root: Path) -> CgroupCpu | None:
    lines = [line.split(":", 2) for line in
             (_read(root / "proc/self/cgroup") or "").splitlines() if line.count(":") >= 2]
    mounts = _mounts(root)
    for _, controllers, path in lines:  # v1: a hierarchy with the cpu controller
        names = set(controllers.split(","))
        if "cpu" not in names:
            continue
        cpu = next((m for m in mounts if m[2] == "cgroup" and "cpu" in m[3]), None)
        acct = next((m for m in mounts if m[2] == "cgroup" and "cpuacct" in m[3]), None)
        if cpu is None or acct is None:
            return None
        d = _dir(root, cpu, path)
        quota = _tightest(_chain(d, root / cpu[1].lstrip("/")), _v1_quota)
        acct_path = next((p for _, c, p in lines if "cpuacct" in c.split(",")), path)
        usage = _dir(root, acct, acct_path) / "cpuacct.usage"
        if not usage.is_file():
            return None
        if quota is None:  # no quota: its own CPU time still tells its load from the host's
            return CgroupCpu(None, None, usage, 1e-9)
        return CgroupCpu(quota[0], quota[1] / "cpu.cfs_quota_us", usage, 1e-9)
    for hierarchy, controllers, path in lines:  # v2: the unified hierarchy ("0::/path")
        v2 = next((m for m in mounts if m[2] == "cgroup2"), None)
        if hierarchy != "0" or controllers or v2 is None:
            continue
        d = _dir(root, v2, path)
        quota = _tightest(_chain(d, root / v2[1].lstrip("/")), _v2_quota)
        if not (d / "cpu.stat").is_file():
            return None
        if quota is None:
            return CgroupCpu(None, None, d / "cpu.stat", 1e-6)
        return CgroupCpu(quota[0], quota[1] / "cpu.max", d / "cpu.stat", 1e-6)
    return None


def cgroup_util(group: CgroupCpu, cpus: float,
                mono: Callable[[], float]) -> Callable[[], float]:
    """Utilisation (0–1) of the `cpus` CPUs the cgroup may use since the previous call: its own
    CPU time over `cpus` × wall time, so other tenants' load on the host is not counted."""
    last = [group.usage_s(), mono()]

    def util() -> float:
        used_s, now = group.usage_s(), mono()
        span_s = now - last[1]
        value = (used_s - last[0]) / (cpus * span_s) if span_s > 0 and cpus > 0 else 0.0
        last[:] = [used_s, now]
        return min(1.0, max(0.0, value))

    return util


def in_container(root: Path = Path("/"), environ: dict | None = None) -> bool:
    """Whether this process runs in a container (Docker, Podman, a Kubernetes pod): there its
    cgroup holds the whole job, so the cgroup's own CPU time is the job's even without a quota;
    on a bare host it is only this process's session or service."""
    import os

    env = os.environ if environ is None else environ
    return ("KUBERNETES_SERVICE_HOST" in env or (root / ".dockerenv").exists()
            or (root / "run/.containerenv").exists())
