"""Tracking the stages of a distillation you run yourself (the public Python API).

`run.py`: `track`, the `Run` it returns, `stage`, `current_run` (a thin Ray shell);
`stage.py`: one stage's window and which devices it holds;
`state.py`: what a tracked run records besides the ledger, and its result files (pure).
"""

from raydistill.tracking.run import Run, current_run, stage, track

__all__ = ["Run", "current_run", "stage", "track"]
