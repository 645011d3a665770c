"""One distillation trial, stage by stage, each stage inside ledger windows.

    teacher_training (setup, reported apart) → teacher_generation → teacher_logit_caching
    → student_training → evaluation (+ inference probes for EPT)

and, when asked, the same student trained without a teacher (the honest baseline). Teacher
artifacts are content-addressed: a trial that finds one already built reuses it and says so;
the artifact's manifest keeps which trial and windows paid for it, and how much.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray

from raydistill.config import ExperimentConfig, to_dict
from raydistill.data.splits import DataSplits
from raydistill.distill.artifacts import MANIFEST, Artifact, ArtifactStore, artifact_key
from raydistill.io import inside

log = logging.getLogger(__name__)

TEACHER_SIDE = ("teacher_generation", "teacher_logit_caching")


@dataclass
class TrialOutcome:
    trial_id: str
    method: str
    scores: dict = field(default_factory=dict)  # quick_acc, lm_eval_acc, for teacher/student
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    student_path: str = ""
    train_metrics: dict = field(default_factory=dict)
    inference_tokens: dict = field(default_factory=dict)


def _has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


class Pipeline:
    """Drives the stages of one experiment on a running Session (ledger + samplers)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, session,
                 artifacts_root: Path, progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.session = session
        self.store = ArtifactStore(artifacts_root)
        self.progress = progress or log.info
        self.use_gpu = _has_gpu()
        self._splits: DataSplits | None = None

    # ---- shared pieces --------------------------------------------------------------------
    def _stage_energy_j(self, trial_id: str, stage: str) -> float:
        rows = self.session.energy_rows()
        return sum(r["energy_j"] for r in rows if r["trial_id"] == trial_id and r["stage"] == stage)

    def _artifact(self, kind: str, inputs: dict, trial_id: str, stage: str,
                  build: Callable[[Path], dict]) -> Artifact:
        found = self.store.get(kind, inputs)
        if found is not None:
            paid = found.built_by.get("energy_j")
            self.progress(f"{stage}: reusing {kind} {found.key} (built by "
                          f"{found.built_by.get('trial_id')}, {paid or 0:,.1f} J); not rebuilt")
            return found
        self.progress(f"{stage}: building {kind} ...")
        started = time.time()
        staging = self.store.staging(kind)
        extra = build(staging)
        artifact = self.store.commit(kind, inputs, staging,
                                     {"trial_id": trial_id, "stage": stage, **extra})
        energy = self._stage_energy_j(trial_id, stage)
        self.store.record_cost(artifact, {"energy_j": energy, "seconds": time.time() - started})
        self.progress(f"{stage}: done in {time.time() - started:.1f} s, {energy:,.1f} J")
        return artifact

    # ---- stages ----------------------------------------------------------------------------
    def data(self) -> DataSplits:
        """The data stage: the source read, split and written as files (once per run)."""
        if self._splits is None:
            from raydistill.data.splits import make_splits

            self._splits = make_splits(self.cfg.data, self.run_dir / "data")
            counts = ", ".join(f"{k} {v:,}" for k, v in self._splits.counts.items())
            self.progress(f"data: {self.cfg.data.source} → {counts} rows")
        return self._splits

    # ---- what determines each teacher artifact (its content address) ------------------------
    def _teacher_inputs(self) -> dict:
        inputs = {"teacher": to_dict(self.cfg.teacher), "seed": self.cfg.seed}
        if self.cfg.teacher.steps:  # a trained teacher depends on what it learned from
            d = self.cfg.data
            inputs["data"] = {"teacher_rows": self.data().digests["teacher"],
                              "max_prompt_tokens": d.max_prompt_tokens,
                              "max_response_tokens": d.max_response_tokens}
        if self.cfg.teacher.model and not self.cfg.teacher.tiny:
            inputs["pretrained"] = self.cfg.teacher.model
        return inputs

    def _synthetic_inputs(self, teacher_key: str) -> dict:
        return {"teacher": teacher_key, "prompts": self.data().digests["train"],
                "max_prompt_tokens": self.cfg.data.max_prompt_tokens,
                "max_new_tokens": self.cfg.generation.max_new_tokens, "decoding": "greedy"}

    def _cache_inputs(self, teacher_key: str, synthetic_key: str) -> dict:
        d = self.cfg.distill
        return {"teacher": teacher_key, "data": synthetic_key, "top_k": d.top_k,
                "temperature": d.temperature, "dtype": d.cache_dtype,
                "max_seq_len": self.cfg.training.max_seq_len, "positions": "response"}

    def planned_reuse(self, method: str) -> set[str]:
        """The stages whose artifact a trial of `method` would find already built (free)."""
        keys = {"teacher_training": artifact_key("teacher_model", self._teacher_inputs())}
        keys["teacher_generation"] = artifact_key(
            "synthetic_data", self._synthetic_inputs(keys["teacher_training"]))
        keys["teacher_logit_caching"] = artifact_key("logit_cache", self._cache_inputs(
            keys["teacher_training"], keys["teacher_generation"]))
        kinds = {"teacher_training": "teacher_model", "teacher_generation": "synthetic_data",
                 "teacher_logit_caching": "logit_cache"}
        return {stage for stage, key in keys.items()
                if (self.store.path(kinds[stage], key) / MANIFEST).is_file()}

    def teacher_model(self, data: DataSplits) -> Artifact:
        from raydistill.distill.stages import train_model_remote

        inputs = self._teacher_inputs()

        def build(out: Path) -> dict:
            return ray.get(train_model_remote.options(**self._task_resources()).remote(
                to_dict(self.cfg.teacher), str(data["teacher"]), str(out),
                self.session.namespace, "setup", "teacher_training", self.cfg.seed,
                to_dict(self.cfg.data)))

        return self._artifact("teacher_model", inputs, "setup", "teacher_training", build)

    def synthetic_data(self, teacher: Artifact, data: DataSplits, trial_id: str) -> Artifact:
        from raydistill.distill.stages import prompt_rows
        from raydistill.distill.teacher import TeacherGenerator, run_pool

        g = self.cfg.generation
        inputs = self._synthetic_inputs(teacher.key)

        def build(out: Path) -> dict:
            run_pool(TeacherGenerator, prompt_rows(data["train"]), out,
                     batch_size=g.batch_size, num_actors=g.num_actors, use_gpu=self.use_gpu,
                     gpus_per_actor=g.gpus_per_actor,
                     ctor={"model_path": str(teacher.path), "namespace": self.session.namespace,
                           "trial_id": trial_id, "max_new_tokens": g.max_new_tokens,
                           "max_prompt_tokens": self.cfg.data.max_prompt_tokens})
            return {}

        return self._artifact("synthetic_data", inputs, trial_id, "teacher_generation", build)

    def logit_cache(self, teacher: Artifact, synthetic: Artifact, trial_id: str) -> Artifact:
        from raydistill.distill.examples import read_synthetic
        from raydistill.distill.teacher import TeacherLogitCacher, run_pool

        d, g = self.cfg.distill, self.cfg.generation
        inputs = self._cache_inputs(teacher.key, synthetic.key)

        def build(out: Path) -> dict:
            if g.cache_engine == "zero3":
                from raydistill.distill.sharded_cache import build_sharded_cache

                build_sharded_cache(self.cfg, synthetic.path, teacher.path, out, self.run_dir,
                                    self.session.namespace, trial_id, self.use_gpu)
                return {"engine": "zero3"}
            run_pool(TeacherLogitCacher, read_synthetic(synthetic.path), out,
                     batch_size=g.batch_size, num_actors=g.num_actors, use_gpu=self.use_gpu,
                     gpus_per_actor=g.gpus_per_actor,
                     ctor={"model_path": str(teacher.path), "namespace": self.session.namespace,
                           "trial_id": trial_id, "top_k": d.top_k,
                           "temperature": d.temperature, "dtype": d.cache_dtype,
                           "max_prompt_tokens": self.cfg.data.max_prompt_tokens,
                           "max_seq_len": self.cfg.training.max_seq_len})
            return {}

        return self._artifact("logit_cache", inputs, trial_id, "teacher_logit_caching", build)

    def student(self, trial_id: str, method: str, teacher: Artifact, data_path: Path,
                cache: Artifact | None, loop_extra: dict | None = None,
                run_name: str | None = None) -> tuple[Path, dict]:
        from raydistill.distill.stages import fit_student

        out = inside(self.run_dir, f"students/{trial_id}")  # trial ids name directories
        d = self.cfg.distill
        engine = f"deepspeed (ZeRO-{d.zero_stage})" if d.engine == "deepspeed" else d.engine
        self.progress(f"student_training [{trial_id}]: {method}, {engine}, "
                      f"{d.num_workers} worker(s) ...")
        started = time.time()
        metrics = fit_student(self.cfg, method, trial_id, self.session.namespace, teacher.path,
                              data_path, cache.path if cache else None, out, self.run_dir,
                              self.use_gpu, loop_extra, run_name)
        self.progress(f"student_training [{trial_id}]: done in {time.time() - started:.1f} s, "
                      f"loss {metrics['first_loss']:.3f} → {metrics['final_loss']:.3f}")
        return out, metrics

    def evaluate(self, trial_id: str, models: dict[str, Path], data: DataSplits) -> dict:
        from raydistill.distill.stages import evaluate_remote

        self.progress(f"evaluation [{trial_id}]: {', '.join(models)} ...")
        return ray.get(evaluate_remote.options(**self._task_resources()).remote(
            {k: str(v) for k, v in models.items()}, str(data["test"]), self.session.namespace,
            trial_id, to_dict(self.cfg.evaluation), to_dict(self.cfg.data),
            str(self.run_dir / "lm_eval" / trial_id), self.cfg.generation.max_new_tokens))

    def _task_resources(self) -> dict:
        # an explicit strategy: inside a Tune trial, tasks are otherwise captured by the
        # trial's own (tiny) placement group and can never be scheduled
        res = {"num_gpus": 1} if self.use_gpu else {"num_cpus": 1}
        return {**res, "scheduling_strategy": "DEFAULT"}

    # ---- a whole trial ---------------------------------------------------------------------
    def run_trial(self, trial_id: str, method: str | None = None) -> TrialOutcome:
        method = method or self.cfg.distill.method
        data = self.data()
        teacher = self.teacher_model(data)
        outcome = TrialOutcome(trial_id, method, artifacts={"teacher_model": teacher})
        if method == "none":
            data_path = data["labelled"]
            cache = None
        else:
            synthetic = self.synthetic_data(teacher, data, trial_id)
            outcome.artifacts["synthetic_data"] = synthetic
            data_path = synthetic.path
            cache = None
            if method == "logit" and self.cfg.distill.top_k > 0:
                cache = self.logit_cache(teacher, synthetic, trial_id)
                outcome.artifacts["logit_cache"] = cache
        path, outcome.train_metrics = self.student(trial_id, method, teacher, data_path, cache)
        outcome.student_path = str(path)
        # the teacher is scored once per run, with the first trial; baselines score the student
        models = {"student": path} if method == "none" else {"teacher": teacher.path,
                                                              "student": path}
        result = self.evaluate(trial_id, models, data)
        outcome.scores = result["scores"]
        outcome.inference_tokens = result["inference_tokens"]
        return outcome
