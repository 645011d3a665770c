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
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray

from raydistill.config import ExperimentConfig, to_dict
from raydistill.data.splits import DataSplits
from raydistill.distill.artifacts import MANIFEST, Artifact, ArtifactStore, artifact_key
from raydistill.io import inside

log = logging.getLogger(__name__)

TEACHER_SIDE = ("teacher_generation", "teacher_logit_caching", "teacher_scoring")
# what a stage's first seconds (or minutes) are spent on, said before the wait
WAITS = {
    "teacher_training": "loading the teacher, then training it",
    "teacher_generation": "starting the teacher engine and loading its weights, then generating",
    "teacher_logit_caching": "loading the teacher, then scoring every synthetic token",
}


@dataclass
class TrialOutcome:
    trial_id: str
    method: str
    scores: dict = field(default_factory=dict)  # test: quick_acc, lm-eval, teacher/student
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    student_path: str = ""
    train_metrics: dict = field(default_factory=dict)
    inference_tokens: dict = field(default_factory=dict)
    dev_scores: dict = field(default_factory=dict)  # dev: quick_acc only (the search reads it)


def _dev_path(data: DataSplits) -> str | None:
    """The dev split's file, None when the splits have no dev rows (no dev scores then)."""
    paths = getattr(data, "paths", data)  # DataSplits, or a plain {split: path} mapping
    if "dev" not in paths or not getattr(data, "counts", {}).get("dev", 1):
        return None
    return str(paths["dev"])


def prompts_only(method: str, lmbda: float) -> bool:
    """On-policy with λ = 1: every step's batch is the student's own completions, so the
    training reads prompts only (no teacher_generation: a teacher pass never trained on)."""
    return method == "onpolicy" and lmbda >= 1.0


def training_check(data, every: int, dev_n: int = 64) -> dict:
    """What the student loop's in-training quality check reads (every `every` steps, exact match
    on the first `dev_n` rows): the `dev` split, never `test`. Dev decides everything (a sweep's
    rungs, budget stopper, searcher and Pareto set; N* at equal quality in a run); the test
    score is measured once after training and reported beside."""
    if Path(data["dev"]).resolve() == Path(data["test"]).resolve():
        raise ValueError(f"the dev and test splits are one file ({data['dev']}): decisions "
                         f"would be taken on the test set; give data a separate dev split")
    return {"progress_every": every, "dev_path": str(data["dev"]), "dev_n": dev_n}


def _deepspeed_ops_built() -> bool:
    """Whether this machine's torch extensions hold a DeepSpeed op already (the driver's
    view; the workers on other nodes may still build theirs)."""
    import os

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR")
                or Path.home() / ".cache" / "torch_extensions")
    return any(root.glob("*deepspeed*")) or any(root.glob("*/*deepspeed*"))


def _directory_fingerprint(model: str) -> str:
    """A digest of a local model directory's file names, sizes and modification times ("" for
    a hub id): cheap, and it changes whenever the model is saved again."""
    import hashlib

    root = Path(model).expanduser()
    if not root.is_dir():
        return ""
    stats = sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in root.rglob("*") if f.is_file())
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:16]


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
        self._engine: tuple[str, str] | None = None

    # ---- shared pieces --------------------------------------------------------------------
    def _stage_energy_j(self, trial_id: str, stage: str) -> float:
        return float(self.session.trial_energy(trial_id).get(stage, 0.0))

    def _artifact(self, kind: str, inputs: dict, trial_id: str, stage: str,
                  build: Callable[[Path], dict]) -> Artifact:
        found = self.store.get(kind, inputs)
        if found is not None:
            paid = found.built_by.get("energy_j")
            self.progress(f"{stage}: reusing {kind} {found.key} (built by "
                          f"{found.built_by.get('trial_id')}, {paid or 0:,.1f} J); not rebuilt")
            return found
        started = time.time()
        with self._running(trial_id, stage, f"building {kind}: {WAITS[stage]}"):
            staging = self.store.staging(kind)
            extra = build(staging)
            artifact = self.store.commit(kind, inputs, staging,
                                         {"trial_id": trial_id, "stage": stage, **extra})
            energy = self._stage_energy_j(trial_id, stage)
            self.store.record_cost(artifact, {"energy_j": energy,
                                              "seconds": time.time() - started})
        return artifact

    def _running(self, trial_id: str, stage: str, waiting: str):
        from raydistill.cluster.progress import stage_progress

        return stage_progress(self.session, trial_id, stage, self.progress, waiting)

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
        teacher = to_dict(self.cfg.teacher)
        teacher.pop("gpus", None)  # where it trains, not what it learns
        inputs = {"teacher": teacher, "seed": self.cfg.seed}
        if self.cfg.teacher.steps:  # a trained teacher depends on what it learned from
            d = self.cfg.data
            inputs["data"] = {"teacher_rows": self.data().digests["teacher"],
                              "max_prompt_tokens": d.max_prompt_tokens,
                              "max_response_tokens": d.max_response_tokens}
        if self.cfg.teacher.model and not self.cfg.teacher.tiny:
            inputs["pretrained"] = self.cfg.teacher.model
            files = _directory_fingerprint(self.cfg.teacher.model)
            if files:  # a local model is used where it is: new weights make a new teacher
                inputs["files"] = files
        return inputs

    def _synthetic_inputs(self, teacher_key: str) -> dict:
        from raydistill.distill.sampling import sampling_of

        # the engine too: its numerics differ, and a sweep over engines must not share one
        return {"teacher": teacher_key, "prompts": self.data().digests["train"],
                "max_prompt_tokens": self.cfg.data.max_prompt_tokens,
                "engine": self.engine()[0], **sampling_of(self.cfg.generation, self.cfg.seed)}

    def _cache_inputs(self, teacher_key: str, synthetic_key: str) -> dict:
        d = self.cfg.distill
        return {"teacher": teacher_key, "data": synthetic_key, "top_k": d.top_k,
                "temperature": d.temperature, "dtype": d.cache_dtype,
                "max_seq_len": self.cfg.training.max_seq_len, "positions": "response",
                # over the tokenizer's rows only (a padded output layer's rows never cached):
                # a cache from before that rule has another address
                "rows": "tokenizer",
                "engine": self.cache_engine()}

    # ---- which engine runs the teacher ------------------------------------------------------
    def engine(self) -> tuple[str, str]:
        """(hf | vllm, why) for generation.engine, decided once per run from the teacher's
        architecture (auto falls back to hf where vLLM is missing or cannot serve it)."""
        if self._engine is None:
            from raydistill.engine_choice import choose_engine
            from raydistill.plan import architecture

            arch = None
            if self.cfg.generation.engine != "hf":
                arch, _ = architecture(self.cfg.teacher.model, self.cfg.teacher.tiny)
            self._engine = choose_engine(self.cfg.generation.engine, arch, self.use_gpu)
        return self._engine

    def cache_engine(self) -> str:
        """What computes the logit cache: zero3, vllm (its raw logprobs are log_softmax at
        T = 1, so only a cache at temperature 1 can come from it), or the hf actor pool."""
        if self.cfg.generation.cache_engine == "zero3":
            return "zero3"
        if self.engine()[0] == "vllm" and self.cfg.distill.temperature == 1.0:
            return "vllm"
        return "hf"

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
        from raydistill.plan import teacher_build_gpus

        inputs = self._teacher_inputs()
        if self.cfg.teacher.model and not self.cfg.teacher.steps:
            return self._teacher_reference(inputs)

        def build(out: Path) -> dict:
            gpus = teacher_build_gpus(self.cfg)
            return ray.get(train_model_remote.options(**self._task_resources(gpus)).remote(
                to_dict(self.cfg.teacher), str(data["teacher"]), str(out),
                self.session.namespace, "setup", "teacher_training", self.cfg.seed,
                to_dict(self.cfg.data)))

        return self._artifact("teacher_model", inputs, "setup", "teacher_training", build)

    def _teacher_reference(self, inputs: dict) -> Artifact:
        """A pretrained teacher used as it is (steps 0): the artifact is the hub id or local
        path itself. No task runs, nothing is loaded or copied, so no teacher_training window
        is recorded at all (its manifest says 0 J): the stages that use the teacher load it
        from where it is, inside their own windows."""
        found = self.store.get("teacher_model", inputs)
        if found is not None:
            return found
        model = self.cfg.teacher.model
        self.progress(f"teacher_training: none (steps 0): the teacher is {model} as it is; "
                      "nothing loaded or copied")
        staging = self.store.staging("teacher_model")
        return self.store.commit("teacher_model", inputs, staging, {
            "trial_id": "setup", "stage": "teacher_training", "pretrained": model,
            "energy_j": 0.0, "seconds": 0.0, "reference": True}, model=model)

    def teacher_side(self, teacher: Artifact, data: DataSplits, trial_id: str,
                     method: str) -> dict[str, Artifact]:
        """The synthetic data and, for cached logit KD, its logit cache. On vLLM both come from
        one teacher pass (the top-k logprobs of each token come back as it is generated)."""
        out = {}
        cached = method == "logit" and self.cfg.distill.top_k > 0
        one_pass = cached and self.cache_engine() == "vllm"
        cache_inputs = None
        inputs = self._synthetic_inputs(teacher.key)
        # where the text exists already, the cache is made over it (prompt_logprobs) if needed
        if one_pass and self.store.get("synthetic_data", inputs) is None:
            cache_inputs = self._cache_inputs(teacher.key, artifact_key("synthetic_data", inputs))
        out["synthetic_data"] = self.synthetic_data(teacher, data, trial_id, cache_inputs)
        if cached:
            # built in this very pass: this trial's, not a reuse
            built = self.store.get("logit_cache", cache_inputs) if cache_inputs else None
            out["logit_cache"] = (replace(built, reused=False) if built is not None else
                                  self.logit_cache(teacher, out["synthetic_data"], trial_id))
        return out

    def synthetic_data(self, teacher: Artifact, data: DataSplits, trial_id: str,
                       cache_inputs: dict | None = None) -> Artifact:
        """The synthetic data set; with `cache_inputs` (vLLM) its logit cache in the same pass,
        committed as its own artifact whose manifest says the pass was paid for once."""
        from raydistill.distill.sampling import sampling_of
        from raydistill.distill.stages import prompt_rows
        from raydistill.distill.teacher import TeacherGenerator, run_pool

        g, d = self.cfg.generation, self.cfg.distill
        inputs = self._synthetic_inputs(teacher.key)
        engine, why = self.engine()
        ctor = {"model_path": teacher.location, "namespace": self.session.namespace,
                "trial_id": trial_id, "max_new_tokens": g.max_new_tokens,
                "max_prompt_tokens": self.cfg.data.max_prompt_tokens,
                "sampling": sampling_of(g, self.cfg.seed)}
        staging: dict[str, Path] = {}

        def build(out: Path) -> dict:
            self.progress(f"teacher_generation: engine {why}")
            stage_cls: type = TeacherGenerator
            if engine == "vllm":
                from raydistill.distill.teacher_vllm import VllmTeacherGenerator

                stage_cls = VllmTeacherGenerator
                ctor.update(gpus=g.gpus_per_actor, memory_fraction=g.gpu_memory_utilization)
                if cache_inputs is not None:
                    staging["cache"] = self.store.staging("logit_cache")
                    ctor["cache"] = {"dir": str(staging["cache"]), "top_k": d.top_k,
                                     "dtype": d.cache_dtype,
                                     "max_seq_len": self.cfg.training.max_seq_len}
            run_pool(stage_cls, prompt_rows(data["train"]), out, batch_size=g.batch_size,
                     num_actors=g.num_actors, use_gpu=self.use_gpu,
                     gpus_per_actor=g.gpus_per_actor, ctor=ctor)
            return {"engine": engine, "one_pass_cache": cache_inputs is not None}

        synthetic = self._artifact("synthetic_data", inputs, trial_id, "teacher_generation",
                                   build)
        if "cache" in staging:  # the pass wrote the cache too (a reused text never builds)
            cache = self.store.commit("logit_cache", cache_inputs, staging["cache"], {
                "trial_id": trial_id, "stage": "teacher_generation", "engine": "vllm",
                "energy_j": 0.0, "paid_by": f"synthetic_data:{synthetic.key} (one pass)"})
            self.progress(f"teacher_logit_caching: written by the generation pass "
                          f"({cache.key}); no second teacher pass")
        return synthetic

    def logit_cache(self, teacher: Artifact, synthetic: Artifact, trial_id: str) -> Artifact:
        from raydistill.distill.examples import read_synthetic
        from raydistill.distill.teacher import TeacherLogitCacher, run_pool

        d, g = self.cfg.distill, self.cfg.generation
        inputs = self._cache_inputs(teacher.key, synthetic.key)
        engine = self.cache_engine()

        def build(out: Path) -> dict:
            if engine == "zero3":
                from raydistill.distill.sharded_cache import build_sharded_cache

                build_sharded_cache(self.cfg, synthetic.path, teacher.location, out, self.run_dir,
                                    self.session.namespace, trial_id, self.use_gpu)
                return {"engine": "zero3"}
            ctor = {"model_path": teacher.location, "namespace": self.session.namespace,
                    "trial_id": trial_id, "top_k": d.top_k, "dtype": d.cache_dtype,
                    "max_prompt_tokens": self.cfg.data.max_prompt_tokens,
                    "max_seq_len": self.cfg.training.max_seq_len}
            stage_cls: type = TeacherLogitCacher
            if engine == "vllm":
                from raydistill.distill.teacher_vllm import VllmTeacherLogitCacher

                stage_cls = VllmTeacherLogitCacher
                ctor.update(gpus=g.gpus_per_actor, memory_fraction=g.gpu_memory_utilization)
            else:
                ctor.update(temperature=d.temperature, chunk_tokens=g.cache_chunk_tokens)
            self.progress(f"teacher_logit_caching: engine {engine}")
            run_pool(stage_cls, read_synthetic(synthetic.path), out, batch_size=g.batch_size,
                     num_actors=g.num_actors, use_gpu=self.use_gpu,
                     gpus_per_actor=g.gpus_per_actor, ctor=ctor)
            return {"engine": engine}

        return self._artifact("logit_cache", inputs, trial_id, "teacher_logit_caching", build)

    def student(self, trial_id: str, method: str, teacher: Artifact, data_path: Path,
                cache: Artifact | None, loop_extra: dict | None = None,
                run_name: str | None = None) -> tuple[Path, dict]:
        from raydistill.distill.stages import fit_student

        out = inside(self.run_dir, f"students/{trial_id}")  # trial ids name directories
        d = self.cfg.distill
        engine = f"deepspeed (ZeRO-{d.zero_stage})" if d.engine == "deepspeed" else d.engine
        build = ("; DeepSpeed builds its ops on first use here (minutes, once)"
                 if d.engine == "deepspeed" and not _deepspeed_ops_built() else "")
        with self._running(trial_id, "student_training",
                           f"{method}, {engine}: starting {d.num_workers} Ray Train "
                           f"worker(s) and loading the models{build}"):
            if method == "onpolicy":
                metrics = self._onpolicy_student(trial_id, teacher, data_path, out,
                                                 loop_extra, run_name)
            else:
                metrics = fit_student(self.cfg, method, trial_id, self.session.namespace,
                                      teacher.location, data_path,
                                      cache.path if cache else None, out, self.run_dir,
                                      self.use_gpu, loop_extra, run_name)
        self.progress(f"student_training [{trial_id}]: loss {metrics['first_loss']:.3f} → "
                      f"{metrics['final_loss']:.3f}")
        return out, metrics

    def _onpolicy_student(self, trial_id: str, teacher: Artifact, data_path: Path, out: Path,
                          loop_extra: dict | None, run_name: str | None) -> dict:
        """The student trained on-policy, with the teacher scoring on its own pool of actors
        (`teacher_scoring`), up for the whole of the training and closed after it."""
        from raydistill.distill.stages import fit_student, vocab_rows
        from raydistill.distill.teacher_scoring import (
            check_dense_request,
            close_pool,
            scoring_engine,
            start_pool,
        )

        d, g = self.cfg.distill, self.cfg.generation
        if d.temperature > 1.0:
            # rollouts sample at the loss's temperature, as TRL does: above 1 they are close to
            # random text for a small student, and the vLLM scorer (T = 1 only) is not used
            log.warning("distill.method onpolicy samples its rollouts at distill.temperature "
                        "%.2g (> 1: near-random completions); set distill.temperature (TRL "
                        "uses 0.9-1.0)", d.temperature)
        rows = vocab_rows(self.cfg, "onpolicy", teacher.location)
        # before the pool loads: a dense answer per micro-batch through Ray can be GBs
        t = self.cfg.training
        micro = max(1, self.cfg.student.batch_size // (d.num_workers * t.grad_accum))
        check_dense_request(d.top_k, rows, micro, self.cfg.training.max_seq_len)
        engine = scoring_engine(self.engine()[0], d.top_k, d.temperature)
        how = "vLLM prompt_logprobs" if engine == "vllm" else "hf forward"
        self.progress(f"teacher_scoring: {g.num_actors} teacher actor(s) serve the student's "
                      f"rollouts ({how})")
        pool = start_pool(teacher.location, self.session.namespace, trial_id,
                          num_actors=g.num_actors, world=d.num_workers, use_gpu=self.use_gpu,
                          gpus_per_actor=g.gpus_per_actor,
                          rows=rows,
                          top_k=d.top_k, temperature=d.temperature, engine=engine,
                          vllm={"gpus": g.gpus_per_actor,
                                "memory_fraction": g.gpu_memory_utilization,
                                "max_model_len": self.cfg.training.max_seq_len + 1})
        try:
            metrics = fit_student(self.cfg, "onpolicy", trial_id, self.session.namespace,
                                  teacher.location, data_path, None, out, self.run_dir,
                                  self.use_gpu, {**(loop_extra or {}),
                                                 "scoring_actors": len(pool)}, run_name)
        finally:
            scoring = close_pool(pool)
        metrics.update(scoring)
        return metrics

    def evaluate(self, trial_id: str, models: dict[str, Path | str], data: DataSplits) -> dict:
        """{"scores": test split (quick_acc, lm-eval), "dev_scores": dev split (quick_acc),
        "inference_tokens": per model}; both score dicts use the same key names."""
        from raydistill.distill.stages import evaluate_remote
        from raydistill.plan import evaluation_gpus

        resources = self._task_resources(evaluation_gpus(self.cfg))
        with self._running(trial_id, "evaluation",
                           f"loading {', '.join(models)}, then lm-eval and the inference "
                           f"probes"):
            return ray.get(evaluate_remote.options(**resources).remote(
                {k: str(v) for k, v in models.items()}, str(data["test"]),
                self.session.namespace, trial_id, to_dict(self.cfg.evaluation),
                to_dict(self.cfg.data), str(self.run_dir / "lm_eval" / trial_id),
                self.cfg.generation.max_new_tokens, _dev_path(data)))

    def _task_resources(self, gpus: int = 1) -> dict:
        """A Ray task holding `gpus` GPUs (one CPU without GPUs: CPU behaviour unchanged); the
        model it loads spreads its layers over them (teacher.load_model_and_tokenizer)."""
        # an explicit strategy: inside a Tune trial, tasks are otherwise captured by the
        # trial's own (tiny) placement group and can never be scheduled
        res = {"num_gpus": gpus} if self.use_gpu else {"num_cpus": 1}
        return {**res, "scheduling_strategy": "DEFAULT"}

    def student_inputs(self, teacher: Artifact, data: DataSplits, trial_id: str, method: str
                       ) -> tuple[dict, Path | str, Artifact | None]:
        """What the student trains on, for `raydistill run` and a sweep's trials alike:
        (teacher-side artifacts built or reused, the data path, the logit cache or None)."""
        if method == "none":
            return {}, data["labelled"], None
        if prompts_only(method, self.cfg.distill.lmbda):
            # every step rolls out: the student never trains on teacher text, so no synthetic
            # data is paid for; its prompts are the train split's (labelled where it has none)
            return {}, data["train"] if data.counts.get("train", 1) else data["labelled"], None
        side = self.teacher_side(teacher, data, trial_id, method)
        return side, side["synthetic_data"].path, side.get("logit_cache")

    # ---- a whole trial ---------------------------------------------------------------------
    def run_trial(self, trial_id: str, method: str | None = None) -> TrialOutcome:
        method = method or self.cfg.distill.method
        data = self.data()
        teacher = self.teacher_model(data)
        outcome = TrialOutcome(trial_id, method, artifacts={"teacher_model": teacher})
        side, data_path, cache = self.student_inputs(teacher, data, trial_id, method)
        outcome.artifacts.update(side)
        # the in-training dev check, as a sweep's trials write it: N* at equal quality reads
        # both students' curves (raydistill.equal_quality)
        path, outcome.train_metrics = self.student(
            trial_id, method, teacher, data_path, cache,
            training_check(data, max(1, self.cfg.student.steps // 10)))
        outcome.student_path = str(path)
        # the teacher is scored once per run, with the first trial; baselines score the student
        models = {"student": path} if method == "none" else {"teacher": teacher.location,
                                                              "student": path}
        result = self.evaluate(trial_id, models, data)
        outcome.scores = result["scores"]
        outcome.dev_scores = result.get("dev_scores", {})
        outcome.inference_tokens = result["inference_tokens"]
        return outcome
