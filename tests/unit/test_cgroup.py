"""The CPU estimate in a container follows its cgroup (quota and own CPU time), not the host:
fake /proc and /sys/fs/cgroup trees of a 192-thread host whose other tenants are busy."""

from pathlib import Path

import pytest

from raydistill.energy.cgroup import cgroup_cpu
from raydistill.energy.sources import IDLE_FRACTION, WATTS_PER_THREAD, CpuEstimateSource

HOST = list(range(192))  # the affinity mask a pod sees on a 192-thread host
MODEL = "Some Future CPU"  # not in the table: 4 W per thread, 768 W for the host


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _host_busy(root: Path) -> None:
    # every host CPU busy (other tenants): a reading of /proc/stat would say 100%
    lines = [f"cpu{i} 9000000 0 1000000 0 0 0 0 0 0 0" for i in HOST]
    _write(root, "proc/stat", "cpu 0 0 0 0 0 0 0 0 0 0\n" + "\n".join(lines) + "\n")


def v2_tree(root: Path, cgroup: str = "/", mount_root: str = "/",
            quotas: dict[str, str] | None = None, usage_usec: int = 0) -> Path:
    """A cgroup v2 layout; `quotas` maps a directory under the mount to its cpu.max."""
    _host_busy(root)
    _write(root, "proc/self/cgroup", f"0::{cgroup}\n")
    _write(root, "proc/self/mountinfo",
           "22 1 0:21 / / rw - overlay overlay rw\n"
           f"31 22 0:28 {mount_root} /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    for rel, text in ({"": "400000 100000"} if quotas is None else quotas).items():
        _write(root, f"sys/fs/cgroup/{rel}/cpu.max".replace("//", "/"), text + "\n")
    leaf = root / "sys/fs/cgroup"
    if mount_root == "/" and cgroup != "/":
        leaf = leaf / cgroup.lstrip("/")
    _write(leaf, "cpu.stat", f"usage_usec {usage_usec}\nuser_usec 0\nsystem_usec 0\n")
    return leaf / "cpu.stat"


def _set_usage(stat: Path, usage_usec: int) -> None:
    stat.write_text(f"usage_usec {usage_usec}\nuser_usec 0\nsystem_usec 0\n")


def test_a_pod_with_a_quota_is_charged_for_its_cpus_at_its_own_use(tmp_path):
    """4 CPUs of quota on a 192-thread host whose other tenants are busy, the pod using 2 CPUs:
    the estimate is 4 threads' TDP at 50%, not the host's 768 W at full load."""
    stat = v2_tree(tmp_path)
    mono = Mono()
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=HOST, mono=mono)
    tdp_w = 4 * WATTS_PER_THREAD
    assert src.tdp_w == pytest.approx(tdp_w)  # not 192 × 4 W
    mono.t += 10.0
    _set_usage(stat, 20_000_000)  # 20 CPU-seconds in 10 s: 2 of its 4 CPUs
    power_w = src.read()[0].power_w
    idle_w = IDLE_FRACTION * tdp_w
    assert power_w == pytest.approx(idle_w + (tdp_w - idle_w) * 0.5)
    assert src.read()[0].method == "estimated"
    assert "cgroup's CPU quota (4 CPUs" in src.describe()
    assert "cgroup's own CPU time" in src.describe()
    mono.t += 5.0  # no CPU time since: idle, whatever the host's tenants do
    assert src.read()[0].power_w == pytest.approx(idle_w)


def test_the_tightest_quota_of_the_cgroup_and_its_ancestors_counts(tmp_path):
    """No cgroup namespace: /proc/self/cgroup names the host's path; the pod's own quota (2 CPUs)
    is on its parent, the container's (no limit) on the leaf."""
    v2_tree(tmp_path, cgroup="/kubepods/pod1/ctr",
            quotas={"kubepods/pod1": "200000 100000", "kubepods/pod1/ctr": "max 100000"})
    group = cgroup_cpu(tmp_path)
    assert group is not None and group.quota_cpus == 2.0
    assert group.quota_file == tmp_path / "sys/fs/cgroup/kubepods/pod1/cpu.max"
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=HOST)
    assert src.tdp_w == pytest.approx(2 * WATTS_PER_THREAD)


def test_a_bind_mounted_cgroup_is_found_at_the_mount_point(tmp_path):
    """The mount's root is the pod's cgroup (mountinfo's root field): stripped from the path."""
    v2_tree(tmp_path, cgroup="/kubepods/pod1", mount_root="/kubepods/pod1",
            quotas={"": "150000 100000"})
    group = cgroup_cpu(tmp_path)
    assert group is not None and group.quota_cpus == 1.5
    assert group.usage_file == tmp_path / "sys/fs/cgroup/cpu.stat"


def test_the_affinity_mask_bounds_a_larger_quota(tmp_path):
    v2_tree(tmp_path, quotas={"": "800000 100000"})
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=[0, 1, 2, 3])
    assert src.tdp_w == pytest.approx(4 * WATTS_PER_THREAD)


def test_cgroup_v1_quota_and_cpuacct_usage(tmp_path):
    _host_busy(tmp_path)
    _write(tmp_path, "proc/self/cgroup",
           "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(tmp_path, "proc/self/mountinfo",
           "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
           "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    d = "sys/fs/cgroup/cpu,cpuacct/docker/abc"
    _write(tmp_path, f"{d}/cpu.cfs_quota_us", "300000\n")
    _write(tmp_path, f"{d}/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, f"{d}/cpuacct.usage", "0\n")
    mono = Mono()
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=HOST, mono=mono)
    assert src.tdp_w == pytest.approx(3 * WATTS_PER_THREAD)
    mono.t += 2.0
    _write(tmp_path, f"{d}/cpuacct.usage", f"{6 * 10**9}\n")  # 6 CPU-s in 2 s: all 3 CPUs
    assert src.read()[0].power_w == pytest.approx(src.tdp_w)


@pytest.mark.parametrize("cpu_max", ["max 100000", None, "garbage"])
def test_without_a_readable_quota_the_estimate_follows_the_affinity_mask(tmp_path, cpu_max):
    v2_tree(tmp_path, quotas={"": cpu_max} if cpu_max else {})
    group = cgroup_cpu(tmp_path)
    assert group is not None and group.quota_cpus is None
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=HOST,
                            util_fn=lambda: 0.0)
    assert src.tdp_w == pytest.approx(192 * WATTS_PER_THREAD)
    assert "affinity mask (no cgroup CPU quota)" in src.describe()


def test_without_a_quota_the_utilisation_is_still_the_cgroups_own(tmp_path):
    """A container without a CPU limit on a busy host: the affinity mask's TDP, at the
    container's own use (its cgroup's CPU time), not the other tenants' (/proc/stat: 100%)."""
    stat = v2_tree(tmp_path, quotas={"": "max 100000"})
    (tmp_path / ".dockerenv").touch()
    mono = Mono()
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=HOST, mono=mono)
    mono.t += 2.0
    _set_usage(stat, 48 * 10**6)  # 48 CPU-s in 2 s: 24 of the 192 CPUs, 12.5%
    assert src.read()[0].power_w == pytest.approx(
        src.idle_w + (src.tdp_w - src.idle_w) * 0.125)
    assert "cgroup's own CPU time" in src.describe()


def test_no_cgroup_files_at_all_is_the_affinity_mask(tmp_path):
    assert cgroup_cpu(tmp_path) is None  # macOS, a sandbox without /proc
    cgroup_cpu(Path("/"))  # this machine's own layout reads without raising


def test_a_bare_host_without_a_quota_keeps_the_host_wide_utilisation(tmp_path):
    """No container, no quota: this process's cgroup (a session, Ray's worker cgroup) need not
    hold the tracked work, so the host's load is used, as it says."""
    v2_tree(tmp_path, cgroup="/user.slice/session-1.scope", quotas={"": "max 100000"})
    src = CpuEstimateSource(cpu_model=MODEL, sockets=1, root=tmp_path, cpus=HOST)
    assert "host-wide utilisation" in src.describe()
