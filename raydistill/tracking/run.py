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
or call `raydistill.stage(...)` there: the run is found by the job's id), and in processes
started from it (torchrun ranks, a vLLM server): they find the run through the RAYDISTILL_*
environment variables set here and join the Ray cluster as drivers; each rank's window is its
own, the stage is their union.

Under a launcher (torchrun, `accelerate launch`, the DeepSpeed launcher, mpirun, srun) every
rank runs the same `with raydistill.track(out=...) as run:`. The global rank 0 (RANK, else the
MPI/Slurm rank; without a launcher, the process that takes the run directory's lock) OWNS the
run: lock, Ray, ledger, samplers, result files. Every other rank JOINS it: it waits (up to
RAYDISTILL_JOIN_TIMEOUT_S, 300 s) for the owner's `RUN/owner.json`, connects to the Ray cluster
it names by address (ranks on other nodes too: each node a node of that cluster), and its
`run.stage(...)` windows and EnergyCallback go into the owner's ledger. A joined rank's
`scores`, `artifact`, `use` and `record_training` are no-ops (rank 0's are kept, as a Trainer
saves and logs on rank 0 only); its `finish` writes nothing and only disconnects. The owner's
`finish` waits (up to RAYDISTILL_RANKS_TIMEOUT_S, 120 s, then a warning) until every rank that
joined has left its block, then closes what is still open, so one results table holds every
rank's windows. See `tracking/launch.py` and `tracking/ending.py`.
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
from raydistill.tracking.ending import flush_samplers
from raydistill.tracking.launch import lock_run_dir as _lock_run_dir
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
        self._rank: int | None = None  # a joined launcher rank (not the owner)
        self._session = None
        self._state: TrackState | None = None
        self._saved_env: dict | None = None
        self._started_ray = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(error=None if exc is None else f"{exc_type.__name__}: {exc}")

    def start(self) -> Run:
        """Own the run (see the module doc for which process does), or join its owner."""
        global _current
        from raydistill.tracking import launch

        prepare_run_dir(self.run_dir)
        launched = launch.launch_rank(os.environ)
        if _current is None and os.environ.get(ENV_RUN_DIR) == str(self.run_dir):
            self._start_joiner(None)  # started from the owner (a subprocess, measure --stage)
        elif launched is not None and launched[0] != 0:
            self._start_joiner(launched[0])
        else:
            self._start_owner()
        self._started_s = time.time()
        # processes started from here (torchrun ranks, servers) find the run and the cluster
        # (and the enclosing window children inherit: restored at the finish, so no window
        # closed by the finish leaves its name behind for later stages and processes)
        from raydistill.cluster.windows import PARENT_ENV

        self._saved_env = {k: os.environ.get(k) for k in (ENV_RUN_DIR, ENV_NAMESPACE,
                                                           ENV_TRIAL, "RAY_ADDRESS", PARENT_ENV)}
        os.environ.update({ENV_RUN_DIR: str(self.run_dir), ENV_NAMESPACE: self.namespace,
                           ENV_TRIAL: self.trial, "RAY_ADDRESS": self._gcs_address})
        _current = self
        log.info("tracking into %s (trial %s%s)", self.run_dir, self.trial,
                 "" if self._owner else ", joined its owner")
        return self

    def _start_owner(self) -> None:
        import ray

        from raydistill.cluster.runtime import Session, init_ray
        from raydistill.tracking import launch

        self._lock = _lock_run_dir(self.run_dir)
        # an earlier launch's file: joiners of this launch must not find it before ours
        (self.run_dir / launch.OWNER_FILE).unlink(missing_ok=True)
        try:
            self._state = load_state(self.run_dir, self.name, self._footprint)
        except Exception:
            self._lock.close()
            raise
        self._started_ray = not ray.is_initialized()
        try:
            init_ray(self.address, self.namespace)  # joins when already initialized (a Ray job)
            self._session = Session(self.run_dir, self.namespace, self.sampling).start()
            self._gcs_address = ray.get_runtime_context().gcs_address
            self._record = launch.new_owner(self._gcs_address, self.namespace, os.environ)
            launch.claim(self._record)
            launch.register_job(self.run_dir, self.namespace, self.trial)
            launch.publish(self.run_dir, self._record)
        except BaseException:
            # a failed start holds nothing: the lock is released (a notebook cell can be run
            # again) and a Ray this call started is stopped
            if self._session is not None:
                self._session.close()
                self._session = None
            self._lock.close()
            if self._started_ray and ray.is_initialized():
                ray.shutdown()
            raise
        self._owner = True

    def _start_joiner(self, rank: int | None) -> None:
        """A rank that is not the owner: connect to the owner's cluster and ledger (rank None:
        a process started by the owner, which finds it through the RAYDISTILL_* variables)."""
        import ray

        from raydistill.tracking import launch
        from raydistill.tracking.stage import ensure_ray

        if rank is None:
            self.namespace = os.environ.get(ENV_NAMESPACE, self.namespace)
            self._started_ray = not ray.is_initialized()
            ensure_ray(self)
        else:
            timeout = launch.timeout_s(launch.ENV_JOIN_TIMEOUT, launch.JOIN_TIMEOUT_S)
            record, self._started_ray = launch.join(self.run_dir, timeout)
            self.namespace = record.namespace
            launch.mark_joined(self.namespace, rank)
        self._gcs_address = ray.get_runtime_context().gcs_address
        launch.register_job(self.run_dir, self.namespace, self.trial)
        self._rank = rank

    def finish(self, error: str | None = None) -> Path:
        """Stop the samplers, write results.parquet and metrics.json; the run directory.
        On a joined rank: say it is done (the owner waits for that) and disconnect."""
        global _current

        if self._rank is not None or (not self._owner and self._saved_env is not None):
            return self._finish_joiner(error)
        if not self._owner:
            raise RuntimeError("Run.finish: only the process that started the run finishes it")
        import ray

        from raydistill.tracking import launch

        try:
            try:
                self._wait_for_ranks()  # the other ranks leave their blocks first
                self._close_leftovers()
                rows = self._session.energy_rows()
            finally:
                self._session.close()
                launch.unregister_job()
                launch.release(self.namespace)
                (self.run_dir / launch.OWNER_FILE).unlink(missing_ok=True)
                self._restore_env()
                _current, self._owner = None, False
                if self._started_ray:
                    ray.shutdown()
            write_results(self.run_dir, rows, self.state, self._started_s, error)
            save_state(self.run_dir, self.state)
        finally:  # a finish that fails (or Ctrl-C while it waits) still frees the directory
            self._lock.close()
        log.info("run written to %s", self.run_dir)
        return self.run_dir

    def _close_leftovers(self) -> list[str]:
        from raydistill.tracking.ending import close_leftovers

        return close_leftovers(self._session)

    def _wait_for_ranks(self) -> None:
        from raydistill.tracking.ending import wait_for_ranks

        wait_for_ranks(self.namespace, self._record.world_size)

    def _finish_joiner(self, error: str | None) -> Path:
        global _current
        import ray

        from raydistill.tracking.ending import leave

        try:
            leave(self.namespace, self._rank, error)
        finally:
            self._restore_env()
            _current = None
            if self._started_ray:  # a driver connection this rank made; the cluster stays
                ray.shutdown()
        return self.run_dir

    def _restore_env(self) -> None:
        for k, v in (self._saved_env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = None

    def __getstate__(self) -> dict:
        # a copy in a Ray worker: no session (the owner's), no state (written by the owner)
        # (and no lock: an open file does not pickle, and the lock is the owner's alone)
        return {**self.__dict__, "_session": None, "_owner": False, "_state": None,
                "_lock": None, "_rank": None, "_saved_env": None, "_started_ray": False}

    @property
    def state(self) -> TrackState:
        if self._state is None:
            raise RuntimeError("this Run was not started here: record scores and artifacts in "
                               "the process that called raydistill.track")
        return self._state

    def _joined(self, what: str) -> bool:
        """On a joined rank, records are the owner's to keep: every rank of a launch runs the
        same script, and rank 0's `scores`/`artifact`/`use`/`record_training` are the ones kept
        (as a Trainer saves and logs on rank 0 only). Here they are no-ops."""
        if self._owner or self._saved_env is None:
            return False  # the owner, or a copy in a Ray worker (which `state` refuses)
        log.debug("%s on a joined rank: recorded by the run's owner (rank 0) only", what)
        return True

    # ---- stages --------------------------------------------------------------------------------
    def stage(self, name: str, trial: str | None = None, tokens: int = 0,
              generated_tokens: int = 0, devices: str | tuple[str, ...] = "auto",
              phase: str = "work"):
        """A window for stage `name` of `trial` (default: the run's) on this node, for the
        devices this process holds (see `process_devices`). `phase="rollout"`: an on-policy
        student's generation inside its training window (energy.samples.PHASES)."""
        from raydistill.tracking.stage import Stage

        return Stage(self, name, trial or self.trial, tokens, generated_tokens, devices, phase)

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
            flush_samplers(self.namespace, self.sampling.push_timeout_s)
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
        if self._joined("artifact"):
            return record
        record = self.state.add_artifact(record)
        save_state(self.run_dir, self.state)
        return record

    def use(self, artifact: ArtifactRecord | str, trial: str) -> None:
        """Trial `trial` used the artifact (a record or its key) without building it."""
        key = artifact if isinstance(artifact, str) else artifact.key
        if self._joined("use"):
            return
        self.state.use_artifact(key, trial)
        save_state(self.run_dir, self.state)

    def scores(self, trial: str, scores: dict[str, float], baseline: str | None = None) -> None:
        """A trial's quality: `student_*` and `teacher_*` keys pair up (OM_perf = student ÷
        teacher); `baseline` names the trial that trained the same student without the teacher,
        for N* (teacher-side energy ÷ the training energy distillation saved)."""
        if self._joined("scores"):
            return
        self.state.add_scores(trial, scores, baseline)
        save_state(self.run_dir, self.state)

    def record_training(self, trial: str, figures: dict) -> None:
        """Training figures (tokens/s, steps, ...) shown beside the trial's energy."""
        if self._joined("record_training"):
            return
        self.state.train.setdefault(trial, {}).update(figures)
        save_state(self.run_dir, self.state)


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
    trial = os.environ.get(ENV_TRIAL)
    if not run_dir or not namespace:
        # a Ray task or actor: its worker was started before `track` set the variables, so
        # the run is found by the job it belongs to
        from raydistill.tracking.launch import job_run

        found = job_run()
        if found is not None:
            run_dir, namespace, trial = found["run_dir"], found["namespace"], found["trial"]
    if not run_dir or not namespace:
        raise ConfigError("raydistill.stage: no run is being tracked here; wrap the work in "
                          "`with raydistill.track(out=...) as run:` (or start this process "
                          "from one)")
    run = Run(run_dir, trial=trial)
    run.namespace = namespace
    return run


@contextlib.contextmanager
def stage(name: str, trial: str | None = None, tokens: int = 0,
          generated_tokens: int = 0, devices: str | tuple[str, ...] = "auto",
          phase: str = "work") -> Iterator:
    """`with raydistill.stage("student_training") as s:` in any process of a tracked run."""
    with current_run().stage(name, trial, tokens, generated_tokens, devices, phase) as s:
        yield s
