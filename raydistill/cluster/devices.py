"""Which GPUs a Ray worker holds, named by UUID the way the samplers key them.

Ray gives a worker GPU ids (indices into its CUDA_VISIBLE_DEVICES, or UUIDs); the ledger keys
devices by NVML UUID. `map_worker_gpus` turns one into the other through CUDA (torch) or NVML,
and says when it cannot be sure (CUDA's order is not PCI order). Split from `windows.py`, which
opens the windows these devices are charged to.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

log = logging.getLogger(__name__)

UUID_PREFIXES = ("GPU-", "MIG-")
FIX_ORDER = ("set CUDA_DEVICE_ORDER=PCI_BUS_ID in the Ray workers' environment (runtime_env "
             "env_vars, or before `ray start`) so CUDA indices follow NVML's PCI order")


def worker_devices() -> tuple[str, ...]:
    """The GPUs this Ray worker holds, as UUIDs where they can be told, else `gpu:<id>`.

    A CPU-only worker holds no device of its own: it is charged only its share of the node's
    CPU, DRAM or estimate. See `map_worker_gpus` for how Ray's ids become UUIDs.
    """
    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    if not ids:
        return ()
    devices, warnings = map_worker_gpus(ids, os.environ, _torch_cuda_uuid(), _pynvml())
    for warning in warnings:
        log.warning("worker_devices: %s", warning)
    return devices


def map_worker_gpus(ray_ids: Sequence[str | int], environ: Mapping[str, str],
                    cuda_uuid: Callable[[int], str] | None,
                    nvml: Any | None) -> tuple[tuple[str, ...], list[str]]:
    """(UUIDs of the GPUs `ray_ids` name, warnings); `gpu:<id>` for any it cannot tell.

    Ray's GPU ids are the entries of the node's CUDA_VISIBLE_DEVICES as Ray assigned them:
    physical CUDA indices, or UUIDs (taken as they are). Ray Train gives every worker of a node
    the same CUDA_VISIBLE_DEVICES (all of the node's GPUs), so a worker reaches its own id at
    local CUDA index = the id's position in that list, and `cuda_uuid(local)` says which GPU
    that is. Without CUDA, the NVML index (PCI order) equals the physical CUDA index only when
    CUDA_DEVICE_ORDER=PCI_BUS_ID, or when all GPUs are one model (CUDA's fastest-first order
    then is PCI order).
    """
    ids = [str(i).strip() for i in ray_ids]
    found: dict[str, str] = {i: i for i in ids if _full_uuid(i)}
    warnings: list[str] = []
    if cuda_uuid is not None:
        found.update(_through_cuda([i for i in ids if i not in found], environ, cuda_uuid,
                                   warnings))
    prefixes = [i for i in ids if i not in found and i.startswith("GPU-")]
    if prefixes:  # CUDA takes a unique prefix of a UUID; the samplers key the whole one
        found.update(_by_prefix(prefixes, nvml))
    rest = [i for i in ids if i not in found]
    if rest:
        found.update(_through_nvml(rest, environ, nvml, warnings))
    labelled = [i for i in ids if i not in found]
    if labelled:
        warnings.append(f"recorded GPU(s) {', '.join(f'gpu:{i}' for i in labelled)} without "
                        "a UUID: no sampler reports such a device, so the ledger reports their "
                        "energy as unmeasured")
    return tuple(found.get(i, f"gpu:{i}") for i in ids), warnings


def _full_uuid(entry: str) -> bool:
    """A whole GPU UUID (GPU- and 36 characters, as NVML and the samplers key GPUs) or a MIG
    instance's; CUDA also accepts any unique prefix of a GPU UUID, which must be resolved."""
    return entry.startswith("MIG-") or (entry.startswith("GPU-") and len(entry) >= 40)


def cuda_visible_entries(spec: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: entries up to the first invalid one (a negative
    or non-numeric index that is no UUID); "-1" or "" hides every GPU."""
    out = []
    for entry in (e.strip() for e in spec.split(",")):
        if not (entry.isdigit() or entry.startswith(UUID_PREFIXES)):
            break
        out.append(entry)
    return out


def _through_cuda(ids: list[str], environ: Mapping[str, str], cuda_uuid: Callable[[int], str],
                  warnings: list[str]) -> dict[str, str]:
    """Each id's UUID from CUDA's own view, at the id's position in CUDA_VISIBLE_DEVICES."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    entries = None if visible is None else [s.strip() for s in visible.split(",")]
    out: dict[str, str] = {}
    for rid in ids:
        if entries is None:
            local = int(rid) if rid.isdigit() else None
        else:
            local = entries.index(rid) if rid in entries else None
        if local is None:
            warnings.append(f"GPU id {rid} is not in CUDA_VISIBLE_DEVICES={visible!r}: CUDA "
                            "cannot tell which GPU it is")
            continue
        try:
            out[rid] = cuda_uuid(local)
        except Exception as exc:  # CUDA refused the index: fall through to NVML
            warnings.append(f"CUDA could not name its device {local} (GPU id {rid}): {exc}")
    return out


def _through_nvml(ids: list[str], environ: Mapping[str, str], nvml: Any | None,
                  warnings: list[str]) -> dict[str, str]:
    """NVML index = physical CUDA index, where that holds (see `_cuda_order_is_pci`)."""
    if nvml is None:
        warnings.append(f"GPU id(s) {', '.join(ids)}: neither CUDA (torch) nor NVML (pynvml) "
                        "is available here to tell which GPU they are")
        return {}
    try:
        nvml.nvmlInit()
    except Exception as exc:
        warnings.append(f"NVML did not start ({exc}): GPU id(s) {', '.join(ids)} not mapped")
        return {}
    try:
        out: dict[str, str] = {}
        why_not = _cuda_order_is_pci(environ, nvml)
        if why_not:
            warnings.append(f"GPU id(s) {', '.join(ids)} are CUDA indices, but {why_not}, so "
                            f"they cannot be matched to NVML's GPUs; {FIX_ORDER}")
            return out
        for rid in ids:
            try:
                uuid_ = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(int(rid)))
            except Exception as exc:  # NO_PERMISSION, lost, not an index, ...
                warnings.append(f"NVML could not open GPU index {rid}: {exc}")
                continue
            out[rid] = uuid_.decode() if isinstance(uuid_, bytes) else str(uuid_)
        return out
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _by_prefix(prefixes: list[str], nvml: Any | None) -> dict[str, str]:
    """Each UUID prefix's whole UUID among NVML's GPUs, where exactly one GPU has it (a
    prefix names one GPU whatever the order); a prefix NVML cannot resolve stays as it is."""
    out = {p: p for p in prefixes}
    if nvml is None:
        return out
    try:
        nvml.nvmlInit()
    except Exception:
        return out
    try:
        uuids = []
        for i in range(nvml.nvmlDeviceGetCount()):
            u = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
            uuids.append(u.decode() if isinstance(u, bytes) else str(u))
    except Exception:
        return out
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    from raydistill.energy.nvml import visible_filter

    for p in prefixes:  # CUDA's own matching of one entry (a unique prefix), as the samplers do
        match = visible_filter(uuids, {"CUDA_VISIBLE_DEVICES": p})
        if match:
            out[p] = uuids[match[0]]
    return out


def _cuda_order_is_pci(environ: Mapping[str, str], nvml: Any) -> str:
    """Why CUDA's device order may differ from NVML's PCI order here; empty when it cannot."""
    if environ.get("CUDA_DEVICE_ORDER", "").strip().upper() == "PCI_BUS_ID":
        return ""
    try:
        names = set()
        for i in range(nvml.nvmlDeviceGetCount()):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))
            names.add(name.decode() if isinstance(name, bytes) else str(name))
    except Exception as exc:
        return (f"CUDA_DEVICE_ORDER is not PCI_BUS_ID and NVML could not read every GPU's "
                f"model ({exc}) to check that they are all alike")
    if len(names) > 1:
        return (f"CUDA_DEVICE_ORDER is not PCI_BUS_ID and the node mixes GPU models "
                f"({', '.join(sorted(names))}): CUDA's default order (fastest first) is not "
                "NVML's PCI order")
    return ""


def _torch_cuda_uuid() -> Callable[[int], str] | None:
    """torch's name for CUDA device i ("GPU-<uuid>"), or None without torch or CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except Exception:  # no torch, or a broken CUDA install
        return None
    return lambda i: f"GPU-{torch.cuda.get_device_properties(i).uuid}"


def _pynvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml
