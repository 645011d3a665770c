"""Tracking the stages of a distillation you run yourself (the public Python API).

`run.py`: `track`, the `Run` it returns, `stage`, `current_run` (a thin Ray shell);
`stage.py`: one stage's window and which devices it holds;
`launch.py`: who owns a run under a launcher, and how the other ranks join it;
`ending.py`: how a run ends (the ranks waited for, the windows still open closed);
`native.py`: a `raydistill run` directory appended to keeps its figures (pure);
`state.py`: what a tracked run records besides the ledger, and its result files (pure).
"""

from raydistill.tracking.run import Run, current_run, stage, track

__all__ = ["Run", "current_run", "stage", "track"]
