"""raydistill: the whole energy bill of distilling a language model, teacher side included.

Importing this package is cheap: it pulls in neither torch nor ray. The pure core
(`raydistill.energy`, `raydistill.pareto`, `raydistill.results`) is plain Python and numpy;
`raydistill.cluster` (Ray) and `raydistill.distill` (torch) are imported only when used.

The Python API, for scripts that run their own distillation (see `raydistill.tracking`):

    with raydistill.track(out="runs/x") as run:
        with run.stage("teacher_generation", trial="a") as s: ...
"""

from raydistill.errors import ConfigError, RayDistillError

__version__ = "0.1.0"
__all__ = ["ConfigError", "RayDistillError", "__version__", "current_run", "stage", "track"]


def __getattr__(name: str):
    # lazy: `raydistill.track` pulls in pandas and, when used, Ray; `import raydistill` does not
    if name in ("track", "stage", "current_run"):
        import importlib

        return getattr(importlib.import_module("raydistill.tracking.run"), name)
    raise AttributeError(f"module 'raydistill' has no attribute {name!r}")
