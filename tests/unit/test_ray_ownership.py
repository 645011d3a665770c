"""A command that joins a Ray someone else started (a notebook, a test session, a driver running
several runs) must leave it up: before, `raydistill measure`, `run` and `sweep` shut down
whatever Ray they found, so the next run in the same process paid a fresh Ray start."""

import sys
import types

import pytest

import raydistill.cluster.runtime as runtime
import raydistill.cluster.windows as windows
from raydistill.config import SamplingConfig
from raydistill.measure import measure_command


def test_init_ray_leaves_an_initialized_ray_alone_and_says_so(monkeypatch):
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append((a, k)))
    assert runtime.init_ray(None, "ns") is False
    assert calls == []


def test_init_ray_reports_the_ray_it_started(monkeypatch):
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a user's RAY_ADDRESS names another Ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append(k))
    assert runtime.init_ray(None, "ns", num_cpus=2) is True
    assert calls[0]["namespace"] == "ns" and calls[0]["num_cpus"] == 2


class _Session:
    def __init__(self, *args):
        self.closed = False

    def start(self):
        return self

    def energy_rows(self):
        return []

    def close(self):
        self.closed = True


class _Window:
    def __init__(self, *args):
        self.window = types.SimpleNamespace(window_id="w")
        self.duration_s = 0.1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("started", [True, False])
def test_measure_shuts_down_only_a_ray_it_started(tmp_path, monkeypatch, started):
    ray = pytest.importorskip("ray")
    shutdowns = []
    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: started)
    monkeypatch.setattr(runtime, "Session", _Session)
    monkeypatch.setattr(windows, "StageWindow", _Window)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    result = measure_command([sys.executable, "-c", "pass"], SamplingConfig(), tmp_path / "m")
    assert result.returncode == 0
    assert len(shutdowns) == (1 if started else 0)
