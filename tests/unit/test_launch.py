"""Launch plumbing without a cluster: which process owns a run, which owner.json a rank may
join, and naming a stage's devices without initialising CUDA."""

import os
import sys
import types

import pytest

from raydistill.errors import ConfigError, RayDistillError
from raydistill.tracking import launch


def test_the_rank_comes_from_whichever_launcher_started_the_process():
    assert launch.launch_rank({}) is None
    assert launch.launch_rank({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert launch.launch_rank({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: no launch
    assert launch.launch_rank({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"}) == (3, 8)
    assert launch.launch_rank({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == (2, 4)
    # torchrun's variables win over the Slurm step it runs in (one task, many ranks)
    assert launch.launch_rank({"RANK": "5", "WORLD_SIZE": "8", "SLURM_PROCID": "0",
                               "SLURM_NTASKS": "2"}) == (5, 8)


def _record(tmp_path, **kw):
    rec = {"token": "t", "gcs_address": "10.0.0.1:6379", "namespace": "ns", "pid": os.getpid(),
           "host": "here", "launch": "MASTER_PORT=1", "world_size": 2, "started_s": 0.0, **kw}
    return launch.OwnerRecord(**rec)


def test_an_owner_file_of_another_launch_or_a_dead_owner_is_not_joined(tmp_path):
    live = _record(tmp_path)
    assert launch.plausible(live, "MASTER_PORT=1", "here")
    assert not launch.plausible(live, "MASTER_PORT=2", "here")  # an earlier launch's file
    dead = _record(tmp_path, pid=2**22 + 12345)  # above pid_max: no such process
    assert not launch.plausible(dead, "MASTER_PORT=1", "here")
    assert launch.plausible(dead, "MASTER_PORT=1", "elsewhere")  # cannot tell: the token can


def test_a_rank_waits_a_bounded_time_for_its_owner_and_says_how_to_fix_it(tmp_path,
                                                                           monkeypatch):
    import ray

    monkeypatch.setenv("MASTER_PORT", "29999")
    launch.publish(tmp_path, _record(tmp_path, launch="MASTER_PORT=1"))  # a stale file
    assert launch.read_owner(tmp_path).launch == "MASTER_PORT=1"
    with pytest.raises(RayDistillError, match="RAYDISTILL_JOIN_TIMEOUT_S"):
        launch.join(tmp_path, timeout=0.5)
    assert not ray.is_initialized()  # the stale file's cluster was never contacted


def test_timeouts_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(launch.ENV_JOIN_TIMEOUT, "12.5")
    assert launch.timeout_s(launch.ENV_JOIN_TIMEOUT, 300.0) == 12.5
    monkeypatch.setenv(launch.ENV_JOIN_TIMEOUT, "soon")
    with pytest.raises(ConfigError, match="number of seconds"):
        launch.timeout_s(launch.ENV_JOIN_TIMEOUT, 300.0)


class _FakeCuda:
    """torch.cuda that records every call: only is_initialized is safe before CUDA is up."""

    def __init__(self, initialised: bool) -> None:
        self.calls: list[str] = []
        self._initialised = initialised

    def is_initialized(self) -> bool:
        return self._initialised

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            if name == "device_count":
                return 2
            if name == "get_device_properties":
                return types.SimpleNamespace(uuid=f"torch-{args[0]}")
            return True
        return call


class _FakeNvml:
    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-nvml-{handle}"


@pytest.fixture
def fake_gpus(monkeypatch):
    from raydistill.cluster import devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # NVML's order is CUDA's
    monkeypatch.setattr(devices, "_pynvml", lambda: _FakeNvml())

    def install(initialised: bool) -> _FakeCuda:
        cuda = _FakeCuda(initialised)
        monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
        return cuda
    return install


def test_naming_a_stages_devices_does_not_initialise_cuda(fake_gpus):
    from raydistill.tracking.stage import process_devices

    cuda = fake_gpus(initialised=False)
    assert process_devices() == ("GPU-nvml-1",)  # LOCAL_RANK 1's GPU, named by NVML
    assert cuda.calls == []  # not is_available, device_count nor get_device_properties


def test_where_cuda_is_up_already_torch_names_the_devices(fake_gpus):
    from raydistill.tracking.stage import process_devices

    cuda = fake_gpus(initialised=True)
    assert process_devices() == ("GPU-torch-1",)
    assert "get_device_properties" in cuda.calls


def test_a_second_track_block_does_not_rejoin_the_first_blocks_owner(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "1")
    first = _record(tmp_path, launch="MASTER_PORT=1", token="first")
    launch.publish(tmp_path, first)  # still there while the first owner writes its results
    monkeypatch.setattr(launch, "_joined_tokens", {"first"})
    with pytest.raises(RayDistillError, match=r"no owner\.json of this launch"):
        launch.join(tmp_path, timeout=0.3)


class _FakeKV:
    def __init__(self, keys: list[str]) -> None:
        self.keys = [k.encode() for k in keys]

    def _internal_kv_list(self, prefix: str, namespace: str) -> list[bytes]:
        return [k for k in self.keys if k.decode().startswith(prefix)]


def test_the_owner_waits_only_for_ranks_that_joined(monkeypatch):
    """`if trainer.is_world_process_zero(): with raydistill.track(...)`: no other rank ever
    joins, so the finish does not wait out RAYDISTILL_RANKS_TIMEOUT_S for them; a rank that
    joined and is not done is waited for (and reported missing)."""
    import time

    monkeypatch.setattr(launch, "_kv", lambda: _FakeKV([]))
    a = time.monotonic()
    assert launch.wait_for_ranks("ns", world_size=8, timeout=30.0) == []
    assert time.monotonic() - a < 1.0
    monkeypatch.setattr(launch, "_kv", lambda: _FakeKV(["ns:joined:1", "ns:joined:2",
                                                         "ns:done:1"]))
    assert launch.wait_for_ranks("ns", world_size=8, timeout=0.3) == [2]
