"""The Python API: put the stages of a distillation you already run into raydistill's ledger.

    import raydistill

    with raydistill.track(out="runs/gkd") as run:            # samplers + ledger, one node or many
        with run.stage("teacher_generation", trial="gkd-a") as s:
            texts = generate(prompts)
            s.add_tokens(prompt_tokens + new_tokens, generated=new_tokens)
        run.artifact("synthetic_data", "data/gen.jsonl", trial="gkd-a",
                     stage="teacher_generation", inputs={"teacher": "Qwen/Qwen2.5-7B"})
        trainer.train()                                       # with integrations.hf.EnergyCallback
        run.scores("gkd-a", {"student_acc": 0.41, "teacher_acc": 0.52}, baseline="sft-a")
    # runs/gkd now holds what `raydistill run` writes: `raydistill report runs/gkd`

A stage is a window on the node where its code runs, for the devices that process holds. It
works in the process that called `track`, in any Ray task or actor of the job (pass `run` to it,
or call `raydistill.stage(...)` there), and in processes started from it (torchrun ranks, a
vLLM server): they find the run through the RAYDISTILL_* environment variables set here and
join the Ray cluster as drivers; each rank's window is its own, the stage is their union.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from raydistill.config import SamplingConfig
from raydistill.errors import ConfigError
from raydistill.io import prepare_run_dir
from raydistill.tracking.state import (
    ArtifactRecord,
    TrackState,
    load_state,
    save_state,
    write_results,
)

log = logging.getLogger(__name__)

ENV_RUN_DIR, ENV_NAMESPACE, ENV_TRIAL = ("RAYDISTILL_RUN_DIR", "RAYDISTILL_NAMESPACE",
                                         "RAYDISTILL_TRIAL")
_current: Run | None = None


class Run:
    """A tracked run: `track(...)` makes one; `with` starts it and writes the results on exit.

    Picklable: a Ray task or actor given `run` opens windows against the same ledger (only the
    process that started it owns the samplers and writes the results)."""

    def __init__(self, out: str | Path, address: str | None = None, source: str = "auto",
                 hz: float = 10.0, idle_s: float = 1.0, name: str | None = None,
                 trial: str | None = None, footprint: dict | None = None,
                 sampling: SamplingConfig | None = None) -> None:
        self.run_dir = Path(out).resolve()
        self.address = address
        self.sampling = sampling or SamplingConfig(source=source, hz=hz, idle_s=idle_s)
        self.name = name or self.run_dir.name
        self.trial = trial or self.name
        self._footprint = footprint
        from raydistill.cluster.runtime import namespace_for

        self.namespace = namespace_for(self.run_dir)
        self._owner = False  # True in the process whose `with` started the session
        self._session = None
        self._state: TrackState | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(error=None if exc is None else f"{exc_type.__name__}: {exc}")

    def start(self) -> Run:
        global _current
        import ray

        from raydistill.cluster.runtime import Session, init_ray

        prepare_run_dir(self.run_dir)
        self._lock = _lock_run_dir(self.run_dir)
        try:
            self._state = load_state(self.run_dir, self.name, self._footprint)
        except Exception:
            self._lock.close()
            raise
        self._started_ray = not ray.is_initialized()
        try:
            init_ray(self.address, self.namespace)  # joins when already initialized (a Ray job)
            self._session = Session(self.run_dir, self.namespace, self.sampling).start()
        except BaseException:
            # a failed start holds nothing: the lock is released (a notebook cell can be run
            # again) and a Ray this call started is stopped
            self._lock.close()
            if self._started_ray and ray.is_initialized():
                ray.shutdown()
            raise
        self._owner, self._started_s = True, time.time()
        # processes started from here (torchrun ranks, servers) find the run and the cluster
        self._saved_env = {k: os.environ.get(k) for k in (ENV_RUN_DIR, ENV_NAMESPACE,
                                                           ENV_TRIAL, "RAY_ADDRESS")}
        os.environ.update({ENV_RUN_DIR: str(self.run_dir), ENV_NAMESPACE: self.namespace,
                           ENV_TRIAL: self.trial,
                           "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
        _current = self
        log.info("tracking into %s (trial %s)", self.run_dir, self.trial)
        return self

    def finish(self, error: str | None = None) -> Path:
        """Stop the samplers, write results.parquet and metrics.json; the run directory."""
        global _current
        import ray

        if not self._owner:
            raise RuntimeError("Run.finish: only the process that started the run finishes it")
        try:
            self._close_leftovers()
            rows = self._session.energy_rows()
        finally:
            self._session.close()
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _current, self._owner = None, False
            if self._started_ray:
                ray.shutdown()
        try:
            write_results(self.run_dir, rows, self.state, self._started_s, error)
            save_state(self.run_dir, self.state)
        finally:
            self._lock.close()
        log.info("run written to %s", self.run_dir)
        return self.run_dir

    def _close_leftovers(self) -> list[str]:
        """Close every window still open, marked "finish", before the figures are computed:
        an open window's end is the node's latest sample, and it would share its devices with
        nothing, or with any later stage appended to this directory. This process's own
        windows first (with their tokens), after the samplers closed those of processes that
        are gone (at their last sign of life), then the rest at the finish."""
        import ray

        from raydistill.cluster import lifetime
        from raydistill.energy.lifetime import FINISH

        own = lifetime.close_all(FINISH)
        self._session.fleet.flush()
        here = {ray.get_runtime_context().get_node_id(): (time.time(), time.monotonic())}
        rest = ray.get(self._session.ledger.close_open.remote(FINISH, here))
        closed = own + [f"{w['window_id']} (pid {w['pid']})" for w in rest]
        if closed:
            log.warning("Run.finish: %d window(s) were still open; closed at the finish, marked "
                        "'finish' (metrics.json windows_closed_by): %s", len(closed),
                        ", ".join(closed))
        return closed

    def __getstate__(self) -> dict:
        # a copy in a Ray worker: no session (the owner's), no state (written by the owner)
        # (and no lock: an open file does not pickle, and the lock is the owner's alone)
        return {**self.__dict__, "_session": None, "_owner": False, "_state": None,
                "_lock": None}

    @property
    def state(self) -> TrackState:
        if self._state is None:
            raise RuntimeError("this Run was not started here: record scores and artifacts in "
                               "the process that called raydistill.track")
        return self._state

    # ---- stages --------------------------------------------------------------------------------
    def stage(self, name: str, trial: str | None = None, tokens: int = 0,
              generated_tokens: int = 0, devices: str | tuple[str, ...] = "auto"):
        """A window for stage `name` of `trial` (default: the run's) on this node, for the
        devices this process holds (see `process_devices`)."""
        from raydistill.tracking.stage import Stage

        return Stage(self, name, trial or self.trial, tokens, generated_tokens, devices)

    def stage_energy_j(self, trial: str, stage: str, settle: bool = True) -> float:
        """The ledger's energy so far for one stage of a trial (open windows included).
        `settle` waits until every sampler has read past now, so a stage that just closed is
        counted whole: the figure then equals the one in results.parquet."""
        import ray

        from raydistill.cluster.ledger_actor import get_ledger

        if settle:
            time.sleep(2.0 / self.sampling.hz)  # two polls: a sample past the window's end
        if self._session is not None:
            self._session.fleet.flush()
        else:  # a copy in a worker or a rank: ask each node's sampler by its name
            _flush_samplers(self.namespace, self.sampling.push_timeout_s)
        energy = ray.get(get_ledger(self.namespace).trial_energy.remote([trial]))[trial]
        return float(energy.get(stage, 0.0))

    # ---- what the stages made and scored -------------------------------------------------------
    def artifact(self, kind: str, path: str | Path, trial: str | None = None,
                 stage: str | None = None, inputs: dict | None = None,
                 share: float = 1.0) -> ArtifactRecord:
        """Record that `stage` of `trial` produced `path` (a logit cache, synthetic data, a
        checkpoint): its cost is its part of that stage's energy (the stage split among the
        artifacts it produced, in proportion to `share`, equal by default), split over the
        trials that `use` it."""
        if stage is None:
            raise ConfigError(f"artifact {kind!r}: say which stage produced it (stage=...)")
        record = ArtifactRecord(kind=kind, path=str(Path(path).resolve()),
                                inputs=dict(inputs or {}), trial_id=trial or self.trial,
                                stage=stage, created_s=time.time(), share=share)
        record = self.state.add_artifact(record)
        save_state(self.run_dir, self.state)
        return record

    def use(self, artifact: ArtifactRecord | str, trial: str) -> None:
        """Trial `trial` used the artifact (a record or its key) without building it."""
        key = artifact if isinstance(artifact, str) else artifact.key
        self.state.use_artifact(key, trial)
        save_state(self.run_dir, self.state)

    def scores(self, trial: str, scores: dict[str, float], baseline: str | None = None) -> None:
        """A trial's quality: `student_*` and `teacher_*` keys pair up (OM_perf = student ÷
        teacher); `baseline` names the trial that trained the same student without the teacher,
        for N* (teacher-side energy ÷ the training energy distillation saved)."""
        self.state.add_scores(trial, scores, baseline)
        save_state(self.run_dir, self.state)

    def record_training(self, trial: str, figures: dict) -> None:
        """Training figures (tokens/s, steps, ...) shown beside the trial's energy."""
        self.state.train.setdefault(trial, {}).update(figures)
        save_state(self.run_dir, self.state)


def _lock_run_dir(run_dir: Path):
    """One tracked process per run directory at a time: two ledgers appending to one log would
    interleave it. The lock goes with the process (a crash cannot leave it held)."""
    import fcntl

    fh = (run_dir / ".track.lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(f"{run_dir} is being tracked by another process; wait for it to "
                          "finish, or track into another directory") from None
    return fh


def _flush_samplers(namespace: str, timeout_s: float) -> None:
    import ray

    from raydistill.cluster.fleet import alive_nodes, sampler_name

    refs = []
    for node in alive_nodes():
        try:
            refs.append(ray.get_actor(sampler_name(node), namespace=namespace).flush.remote())
        except ValueError:  # no sampler on that node (yet): nothing of it to flush
            continue
    for ref in refs:
        try:
            ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # a figure a little behind, not a failed stage
            log.warning("a sampler could not flush: %s", type(exc).__name__)


def track(out: str | Path = "runs/tracked", address: str | None = None, source: str = "auto",
          hz: float = 10.0, idle_s: float = 1.0, name: str | None = None,
          trial: str | None = None, footprint: dict | None = None,
          sampling: SamplingConfig | None = None) -> Run:
    """A run to measure stages into: `with raydistill.track(out=...) as run: ...`.

    `address` joins a Ray cluster (None: RAY_ADDRESS, else a local Ray; inside a Ray job, that
    job's cluster). `source` is the power source spec (`auto`: NVML, else RAPL, else a labelled
    estimate). `footprint` takes region, pue, gco2_per_kwh, hourly_csv, wue_l_per_kwh,
    water_l_per_kwh; `sampling` (a SamplingConfig) sets every sampler knob at once, in place of
    source, hz and idle_s. A directory tracked before is appended to: its stages and scores
    stay."""
    return Run(out, address, source, hz, idle_s, name, trial, footprint, sampling)


def current_run() -> Run:
    """The run this process measures into: the one `track` started here, else the one named by
    the RAYDISTILL_* environment (a process started from a tracked one)."""
    if _current is not None:
        return _current
    run_dir, namespace = os.environ.get(ENV_RUN_DIR), os.environ.get(ENV_NAMESPACE)
    if not run_dir or not namespace:
        raise ConfigError("raydistill.stage: no run is being tracked here; wrap the work in "
                          "`with raydistill.track(out=...) as run:` (or start this process "
                          "from one)")
    run = Run(run_dir, trial=os.environ.get(ENV_TRIAL))
    run.namespace = namespace
    return run


@contextlib.contextmanager
def stage(name: str, trial: str | None = None, tokens: int = 0,
          generated_tokens: int = 0, devices: str | tuple[str, ...] = "auto") -> Iterator:
    """`with raydistill.stage("student_training") as s:` in any process of a tracked run."""
    with current_run().stage(name, trial, tokens, generated_tokens, devices) as s:
        yield s
