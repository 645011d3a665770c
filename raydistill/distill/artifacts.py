"""Content-addressed artifacts: teacher checkpoints, synthetic data, logit caches.

An artifact's key is the hash of the inputs that made it, so a sweep builds each one once and
reuses it. An artifact is built in a temporary directory and renamed into place with a
`_artifact.json` manifest (what made it, which ledger windows paid for it) written last: a
directory without a manifest is an unfinished build and is never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "_artifact.json"


def artifact_key(kind: str, inputs: dict) -> str:
    """A stable hash of everything that determines the artifact's content."""
    canonical = json.dumps({"kind": kind, **inputs}, sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    kind: str  # teacher_model | synthetic_data | logit_cache | student_model
    key: str
    path: Path
    inputs: dict = field(default_factory=dict)
    built_by: dict = field(default_factory=dict)  # trial_id, stage, window ids, energy_j
    created_s: float = 0.0
    reused: bool = False  # True when this run found it already built
    # A reference holds no files of its own: the model it names (a hub id or a local path) is
    # the artifact. A pretrained teacher used as it is (steps 0) is one: copying 140 GB of a
    # 70B checkpoint into the store would change nothing but the bill.
    model: str = ""

    @property
    def location(self) -> str:
        """Where a model artifact is loaded from: the model it names, else its directory."""
        return self.model or str(self.path)


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, inputs: dict) -> Artifact | None:
        key = artifact_key(kind, inputs)
        manifest = self.path(kind, key) / MANIFEST
        if not manifest.is_file():
            return None
        data = json.loads(manifest.read_text())
        return Artifact(kind, key, self.path(kind, key), data.get("inputs", {}),
                        data.get("built_by", {}), data.get("created_s", 0.0), reused=True,
                        model=data.get("model", ""))

    def staging(self, kind: str) -> Path:
        """A fresh directory to build into; pass it to `commit` when the build is done."""
        tmp = self.root / kind / f".building-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, kind: str, inputs: dict, staging: Path, built_by: dict,
               model: str = "") -> Artifact:
        """Move `staging` into place under its content address; `model` makes the artifact a
        reference to that model (the directory then holds the manifest alone)."""
        key = artifact_key(kind, inputs)
        created = time.time()
        (staging / MANIFEST).write_text(json.dumps(
            {"kind": kind, "key": key, "inputs": inputs, "built_by": built_by,
             "created_s": created, **({"model": model} if model else {})}, indent=1,
            sort_keys=True, default=str))
        final = self.path(kind, key)
        try:
            os.replace(staging, final)
        except OSError:
            # another trial finished the same artifact first: keep theirs, drop ours
            log.info("artifact %s/%s was built concurrently; keeping the first", kind, key)
            shutil.rmtree(staging, ignore_errors=True)
            existing = self.get(kind, inputs)
            if existing is None:
                raise
            return existing
        return Artifact(kind, key, final, inputs, built_by, created, model=model)

    def record_cost(self, artifact: Artifact, built_by: dict) -> None:
        """Add the energy figures to a committed artifact's manifest (written whole)."""
        manifest = artifact.path / MANIFEST
        data = json.loads(manifest.read_text())
        data["built_by"] = {**data.get("built_by", {}), **built_by}
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
        os.replace(tmp, manifest)


def describe(artifact: Artifact) -> dict:
    d = asdict(artifact)
    d["path"] = str(artifact.path)
    return d
