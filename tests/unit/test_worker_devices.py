"""Which GPUs a Ray worker holds, on a simulated 8-GPU node whose CUDA order is not PCI order."""

import logging
import sys
import types
from collections.abc import Mapping

import pytest

from raydistill.cluster import devices
from raydistill.cluster.devices import map_worker_gpus, worker_devices
from raydistill.energy.simulate import SimNode, gpu_node

ALL_EIGHT = "0,1,2,3,4,5,6,7"
PAIRS = [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
A100 = "NVIDIA A100-SXM4-80GB"


def cuda_view(node: SimNode, environ: Mapping[str, str]):
    """What `torch.cuda.get_device_properties(local).uuid` names, as CUDA would with this
    environment: CUDA_VISIBLE_DEVICES picks physical indices (in CUDA's order, fastest first,
    unless CUDA_DEVICE_ORDER=PCI_BUS_ID) and renumbers them from 0."""
    order = node.gpus if environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" else node.cuda_order()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    physical = range(len(order)) if visible is None else [int(e) for e in visible.split(",")]

    def uuid(local: int) -> str:
        return order[physical[local]].uuid  # IndexError past the visible ones, as CUDA refuses

    return uuid


def mixed_node() -> SimNode:
    """PCI 0–3 are A100s, 4–7 H100s; CUDA (fastest first) numbers 7, 6, ..., 0."""
    node = gpu_node(8)
    for g in node.gpus[:4]:
        g.name = A100
    return node


def test_cuda_order_differs_from_pci_order_on_the_test_node():
    node = gpu_node(8)
    assert [g.uuid for g in node.cuda_order()] == [g.uuid for g in reversed(node.gpus)]


@pytest.mark.parametrize("visible", [ALL_EIGHT, "4,5,6,7,0,1,2,3"])
def test_train_workers_sharing_visible_devices_each_get_exactly_their_gpus(visible):
    node = gpu_node(8)
    env = {"CUDA_VISIBLE_DEVICES": visible}  # Ray Train: one list for every worker of the node
    truth = node.cuda_order()  # physical CUDA index i is truth[i]
    seen = []
    for ids in PAIRS:
        devices, warnings = map_worker_gpus(ids, env, cuda_view(node, env), node.pynvml())
        assert devices == tuple(truth[int(i)].uuid for i in ids) and warnings == []
        assert devices != tuple(node.gpus[int(i)].uuid for i in ids)  # NVML index = id: wrong
        seen.extend(devices)
    assert sorted(seen) == sorted(g.uuid for g in node.gpus)  # all eight, each once


def test_a_worker_seeing_only_its_own_gpus_maps_the_same():
    node = gpu_node(8)
    shared = {"CUDA_VISIBLE_DEVICES": ALL_EIGHT}
    own = {"CUDA_VISIBLE_DEVICES": "2,3"}  # a plain Ray task with num_gpus=2
    assert map_worker_gpus(["2", "3"], own, cuda_view(node, own), None) == \
        map_worker_gpus(["2", "3"], shared, cuda_view(node, shared), None)


def test_without_visible_devices_the_id_is_the_cuda_index():
    node = gpu_node(8)
    devices, _ = map_worker_gpus([5], {}, cuda_view(node, {}), None)
    assert devices == (node.cuda_order()[5].uuid,)


def test_nvml_only_with_pci_bus_id_order_maps_index_to_uuid():
    node = mixed_node()
    env = {"CUDA_VISIBLE_DEVICES": ALL_EIGHT, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    for ids in PAIRS:
        devices, warnings = map_worker_gpus(ids, env, None, node.pynvml())
        assert devices == tuple(node.gpus[int(i)].uuid for i in ids) and warnings == []
        # what CUDA itself would name under that order
        assert devices == map_worker_gpus(ids, env, cuda_view(node, env), None)[0]


def test_nvml_only_on_mixed_models_without_pci_order_labels_and_says_how_to_fix():
    node = mixed_node()
    devices, warnings = map_worker_gpus(["2", "3"], {"CUDA_VISIBLE_DEVICES": ALL_EIGHT}, None,
                                        node.pynvml())
    assert devices == ("gpu:2", "gpu:3")
    text = " ".join(warnings)
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in text and A100 in text and "unmeasured" in text


def test_nvml_only_on_one_model_in_pci_order_maps_index_to_uuid():
    node = gpu_node(8)
    for g in node.gpus:
        g.cuda_index = None  # alike GPUs: CUDA's fastest-first order is the PCI order
    devices, warnings = map_worker_gpus(["6", "7"], {}, None, node.pynvml())
    assert devices == (node.gpus[6].uuid, node.gpus[7].uuid) and warnings == []
    assert devices == map_worker_gpus(["6", "7"], {}, cuda_view(node, {}), None)[0]


def test_unopenable_gpu_is_labelled_the_others_mapped():
    node = gpu_node(8)
    node.gpus[3].no_permission = True
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    devices, warnings = map_worker_gpus(["2", "3"], env, None, node.pynvml())
    assert devices == (node.gpus[2].uuid, "gpu:3")
    assert any("index 3" in w for w in warnings)
    # without the order set, the models cannot all be read: nothing is guessed
    devices, warnings = map_worker_gpus(["2"], {}, None, node.pynvml())
    assert devices == ("gpu:2",) and any("PCI_BUS_ID" in w for w in warnings)


def test_cuda_refusal_falls_back_to_nvml():
    node = gpu_node(8)
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    devices, warnings = map_worker_gpus(["0", "7"], env, cuda_view(node, env), node.pynvml())
    assert devices == (node.gpus[0].uuid, node.gpus[7].uuid)
    assert any("7" in w and "CUDA_VISIBLE_DEVICES" in w for w in warnings)


def test_mig_and_gpu_uuids_pass_through():
    def never(local):
        raise AssertionError("a UUID needs no lookup")

    ids = ["MIG-4f1c2a9e-0000-4000-8000-000000000001", "MIG-4f1c2a9e-0000-4000-8000-000000000002",
           "GPU-00000003-sim0-4000-8000-000000000003"]
    assert map_worker_gpus(ids, {"CUDA_VISIBLE_DEVICES": ",".join(ids)}, never, None) == (
        tuple(ids), [])


def test_nothing_to_ask_labels_with_a_warning():
    devices, warnings = map_worker_gpus(["1"], {}, None, None)
    assert devices == ("gpu:1",) and any("neither CUDA" in w for w in warnings)


# ---- worker_devices: the real inputs --------------------------------------------------------


def _ray_ids(monkeypatch, ids):
    ctx = types.SimpleNamespace(get_accelerator_ids=lambda: {"GPU": ids})
    monkeypatch.setattr(devices.ray, "get_runtime_context", lambda: ctx)


def test_worker_devices_reads_cuda_through_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    node = gpu_node(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ALL_EIGHT)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    view = cuda_view(node, {"CUDA_VISIBLE_DEVICES": ALL_EIGHT})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(uuid=view(i).removeprefix("GPU-")))
    _ray_ids(monkeypatch, ["4", "5"])
    assert worker_devices() == (node.cuda_order()[4].uuid, node.cuda_order()[5].uuid)


def test_worker_devices_without_cuda_logs_the_fix(monkeypatch, caplog):
    node = mixed_node()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ALL_EIGHT)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setattr(devices, "_torch_cuda_uuid", lambda: None)  # a host without CUDA
    monkeypatch.setitem(sys.modules, "pynvml", node.pynvml())
    _ray_ids(monkeypatch, ["0", "1"])
    with caplog.at_level(logging.WARNING):
        assert worker_devices() == ("gpu:0", "gpu:1")  # not PCI GPUs 0 and 1: they are not its
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in m for m in caplog.messages)


def test_cpu_only_worker_holds_no_gpu(monkeypatch):
    _ray_ids(monkeypatch, [])
    assert worker_devices() == ()


# ---- CUDA_VISIBLE_DEVICES as CUDA reads it (issue 27) --------------------------------------


@pytest.mark.parametrize("spec,entries", [
    ("-1", []), ("", []), ("0,1,-1,2", ["0", "1"]), ("2, 3", ["2", "3"]),
    ("GPU-8932f937,1", ["GPU-8932f937", "1"]), ("0,foo,1", ["0"])])
def test_visible_devices_are_read_as_cuda_reads_them(spec, entries):
    assert devices.cuda_visible_entries(spec) == entries


def test_cuda_visible_devices_minus_one_holds_no_gpu(monkeypatch):
    """The usual way to hide every GPU: it was a `gpu:-1` device no sampler reports, so the
    stage carried an unmeasured device instead of its share of the node's CPU."""
    import importlib

    stage = importlib.import_module("raydistill.tracking.stage")  # the module, not the function
    monkeypatch.setattr(stage, "_in_ray_worker", lambda: False)
    assert stage.process_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == ()
    assert stage.process_devices({"CUDA_VISIBLE_DEVICES": "-1", "LOCAL_RANK": "0"}) == ()


def test_a_uuid_prefix_is_resolved_to_the_whole_uuid():
    """CUDA accepts a unique prefix of a GPU's UUID; the samplers key GPUs by the whole UUID,
    so a prefix kept as it was matched no sampler. NVML resolves it, whatever the order."""
    node = mixed_node()  # CUDA order is not PCI order here: a prefix does not care
    prefix = node.gpus[5].uuid[:13]
    devices, warnings = map_worker_gpus([prefix], {"CUDA_VISIBLE_DEVICES": prefix}, None,
                                        node.pynvml())
    assert devices == (node.gpus[5].uuid,) and warnings == []
    whole = node.gpus[2].uuid
    assert map_worker_gpus([whole], {}, None, None) == ((whole,), [])  # passes through
