"""The analysis notebook executes on a small run directory; the comparison script runs."""

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.report_fixture import make_sweep_dir

ROOT = Path(__file__).resolve().parents[2]


def test_notebook_executes_on_a_sweep_dir(tmp_path, monkeypatch):
    run_dir = make_sweep_dir(tmp_path)
    monkeypatch.setenv("RAYDISTILL_RUN_DIR", str(run_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "analysis" / "report.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(str(o.get("text", o.get("data", ""))) for c in nb.cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "hypervolume" in outputs and "largest stage is student_training" in outputs
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors


def test_compare_runs_prints_both_sides(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "analysis"))
    try:
        import compare_runs
    finally:
        sys.path.pop(0)
    a, b = make_sweep_dir(tmp_path / "a"), make_sweep_dir(tmp_path / "b")
    assert compare_runs.main([str(a), str(b), "--png", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "b/a" in out and (tmp_path / "c.png").exists()
    assert compare_runs.main([str(a), str(tmp_path)]) == 2

