"""Configuration: frozen dataclasses, strict loading, `--set a.b=c` overrides.

Unknown keys are rejected with the valid ones listed; values are checked against the field
types; every error is one line that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raydistill.cache_memory import DEFAULT_CHUNK_TOKENS
from raydistill.errors import ConfigError
from raydistill.strict import apply_overrides, from_dict, load_yaml, to_dict


@dataclass(frozen=True)
class SamplingConfig:
    """How each node's PowerSampler reads and reports power."""

    source: str = "auto"  # see raydistill.energy.sources.SPEC_FORMS (simulate:PATH included)
    hz: float = 10.0  # polls per second
    push_interval_s: float = 2.0  # budgets need fresh totals; the ledger wants few calls
    idle_s: float = 1.0  # idle baseline measured over this long at sampler start (0 = none)
    max_gap_s: float = 2.0  # a stretch without samples longer than this is flagged as a gap
    push_timeout_s: float = 10.0  # a push slower than this counts as the ledger being away
    max_pending_batches: int = 100_000  # in-memory bound on unacknowledged batches
    spool_dir: str = ""  # where unacknowledged batches wait on disk ("" = temp dir)

    def __post_init__(self) -> None:
        _positive("sampling.hz", self.hz)
        _positive("sampling.push_interval_s", self.push_interval_s)
        _positive("sampling.max_gap_s", self.max_gap_s)
        _positive("sampling.push_timeout_s", self.push_timeout_s)
        _positive("sampling.max_pending_batches", self.max_pending_batches)
        if self.idle_s < 0:
            raise ConfigError(f"sampling.idle_s must be >= 0, got {self.idle_s}")
        from raydistill.energy.sources import validate_source_spec

        validate_source_spec(self.source)


@dataclass(frozen=True)
class FootprintConfig:
    region: str = "WORLD"
    pue: float = 1.0
    gco2_per_kwh: float | None = None  # explicit intensity overrides the region table
    hourly_csv: str = ""  # timestamp,gco2_per_kwh (overrides both)
    wue_l_per_kwh: float = 0.0  # on-site water usage effectiveness
    water_l_per_kwh: float | None = None  # grid water intensity override

    def __post_init__(self) -> None:
        if self.pue < 1.0:
            raise ConfigError(f"footprint.pue must be >= 1.0, got {self.pue}")



STAGES = ("teacher_training", "teacher_generation", "teacher_logit_caching", "teacher_scoring",
          "student_training", "evaluation")
METHODS = ("none", "sft", "logit", "feature", "relational", "onpolicy")
LOSS_NAMES = ("forward_kl", "reverse_kl", "jsd", "tvd")  # = distill.losses.LOSSES (tested)


SPLITS = ("test", "dev", "labelled", "train")  # drawn from the shuffled pool in this order
DEFAULT_SPLITS = {"test": 300, "dev": 100, "labelled": 400, "train": 4000}


@dataclass(frozen=True)
class AdditionConfig:
    """The built-in task: n-digit addition with the answer reversed (a causal LM can carry).
    A data source like any other: it writes rows that are read back through the same path."""

    digits: int = 2

    def __post_init__(self) -> None:
        _positive("data.addition.digits", self.digits)


@dataclass(frozen=True)
class DataConfig:
    """Where prompts and gold responses come from, and how they are split.

    `source`: `builtin:addition`, a local .jsonl / .json / .parquet / .csv file, or a Hugging
    Face dataset id (`org/name`, loaded with `datasets.load_dataset` when reachable).
    `columns` maps raydistill's fields (prompt, messages, response, system) to the source's
    column names; `prompt_template` / `response_template` build them from several columns
    (Python format syntax, e.g. "Question: {question}"). `splits` gives each split's size as a
    count or a fraction of the pool ("rest" = what is left; train only); `split_sources` reads a
    split from its own file or dataset split instead (e.g. {test: test} for a hub dataset).
    """

    source: str = "builtin:addition"
    subset: str = ""  # dataset config name (load_dataset's `name`, e.g. gsm8k's "main")
    hf_split: str = "train"  # the dataset split the pool is drawn from
    columns: dict = field(default_factory=dict)
    prompt_template: str = ""
    response_template: str = ""
    system_prompt: str = ""  # prepended as a system turn unless a row has its own
    answer_pattern: str = ""  # regex whose group 1 is the answer exact match compares
    max_prompt_tokens: int = 512  # longer prompts keep their last tokens
    max_response_tokens: int = 256  # gold responses are cut here (and lose their EOS)
    sample: int = 0  # seeded sample of N pool rows before splitting (0 = all)
    seed: int = 0
    splits: dict = field(default_factory=lambda: dict(DEFAULT_SPLITS))  # unnamed = default
    split_sources: dict = field(default_factory=dict)
    addition: AdditionConfig = field(default_factory=AdditionConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", {**DEFAULT_SPLITS, **self.splits})
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"data.splits: unknown split {unknown[0]!r}; valid: "
                              f"{', '.join(SPLITS)}")
        for name, size in self.splits.items():
            ok = (size == "rest" and name == "train") or (
                isinstance(size, int) and not isinstance(size, bool) and size >= 0) or (
                isinstance(size, float) and 0 < size < 1)
            if not ok:
                raise ConfigError(f"data.splits.{name} must be a count >= 0, a fraction in "
                                  f"(0, 1){' or rest' if name == 'train' else ''}, got {size!r}")
        for name in set(self.split_sources) - set(SPLITS):
            raise ConfigError(f"data.split_sources: unknown split {name!r}; valid: "
                              f"{', '.join(SPLITS)}")
        fields_ = ("prompt", "messages", "response", "system", "id")
        for name in set(self.columns) - set(fields_):
            raise ConfigError(f"data.columns: unknown field {name!r}; valid: {', '.join(fields_)}")
        _positive("data.max_prompt_tokens", self.max_prompt_tokens)
        _positive("data.max_response_tokens", self.max_response_tokens)
        if self.sample < 0:
            raise ConfigError(f"data.sample must be >= 0, got {self.sample}")
        if self.answer_pattern:
            import re

            try:
                re.compile(self.answer_pattern)
            except re.error as exc:
                raise ConfigError(f"data.answer_pattern is not a valid regex: {exc}") from None


@dataclass(frozen=True)
class ModelConfig:
    """A Hugging Face causal LM: a hub id / local path, or a tiny config built in code."""

    model: str = ""  # hub id or local path; empty = build `tiny` from scratch
    tiny: dict = field(default_factory=dict)  # family, hidden_size, num_hidden_layers, ...
    # Optimizer steps. A teacher with steps 0 is used as it is (a pretrained model is fetched);
    # steps > 0 trains it (fine-tunes a pretrained one) on the gold rows outside dev and test.
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64  # sequences per optimizer step (all workers, all micro-batches)
    # Teacher only: GPUs its training task (steps > 0) holds, the model's layers split over
    # them (0 = generation.gpus_per_actor). A student is placed by distill.num_workers.
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.gpus < 0:
            raise ConfigError(f"gpus must be >= 0 (0 = generation.gpus_per_actor), got "
                              f"{self.gpus}")
        _positive("lr", self.lr)
        _positive("batch_size", self.batch_size)
        if not self.model and not self.steps:
            raise ConfigError("a model built from `tiny` needs steps > 0 (it starts random)")
        if self.model.startswith(("/", "./", "../", "~")) and not Path(
                self.model).expanduser().exists():
            raise ConfigError(f"model path {self.model} does not exist (a local path must; "
                              "a hub id is written org/name)")
        if self.model and self.tiny:
            raise ConfigError("give either model (hub id or path) or tiny (a config), not both")
        from raydistill.local_models import check_name

        check_name(self.model)


@dataclass(frozen=True)
class DistillConfig:
    method: str = "logit"  # none | sft | logit | feature | relational
    loss: str = "forward_kl"  # forward_kl | reverse_kl | jsd | tvd (logit KD)
    temperature: float = 2.0
    alpha: float = 0.5  # weight of cross-entropy on the data; 1 - alpha on the KD term
    beta: float = 0.5  # generalized JSD: 0 forward KL, 1 reverse KL
    lmbda: float = 1.0  # onpolicy: the share of steps whose batch the student generates (GKD)
    top_k: int = 32  # logit cache size; 0 = online teacher (dense logits)
    cache_dtype: str = "bfloat16"  # float16 | bfloat16 | float32
    feature_kind: str = "mse"  # mse | cosine
    engine: str = "deepspeed"  # deepspeed | ddp
    zero_stage: int = 2
    num_workers: int = 1
    # Online teacher (feature, relational, logit with top_k 0) inside the training workers:
    # zero3 = one ZeRO-3 inference engine sharded across them (as TRL's prepare_deepspeed);
    # replicated = a full copy in every worker (the only choice with engine ddp).
    online_teacher: str = "auto"  # auto = zero3 with engine deepspeed, replicated with ddp

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            valid = ", ".join(METHODS)
            raise ConfigError(f"distill.method {self.method!r} unknown; valid: {valid}")
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"distill.loss {self.loss!r} unknown; valid: {', '.join(LOSS_NAMES)}")
        if self.feature_kind not in ("mse", "cosine"):
            raise ConfigError(f"distill.feature_kind {self.feature_kind!r}; valid: mse, cosine")
        _positive("distill.temperature", self.temperature)
        if not 0 <= self.alpha <= 1 or not 0 <= self.beta <= 1:
            raise ConfigError("distill.alpha and distill.beta must lie in [0, 1]")
        if not 0 <= self.lmbda <= 1:
            raise ConfigError(f"distill.lmbda must lie in [0, 1], got {self.lmbda}")
        if self.engine not in ("deepspeed", "ddp"):
            raise ConfigError(f"distill.engine {self.engine!r} unknown; valid: deepspeed, ddp")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"distill.zero_stage must be 0-3, got {self.zero_stage}")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError("distill.cache_dtype must be float16, bfloat16 or float32")
        if self.top_k < 0:
            raise ConfigError(f"distill.top_k must be >= 0, got {self.top_k}")
        _positive("distill.num_workers", self.num_workers)
        if self.online_teacher not in ("auto", "zero3", "replicated"):
            raise ConfigError(f"distill.online_teacher {self.online_teacher!r} unknown; valid: "
                              "auto, zero3, replicated")
        if self.online_teacher == "zero3" and self.engine != "deepspeed":
            raise ConfigError("distill.online_teacher zero3 needs distill.engine deepspeed")

    @property
    def teacher_sharding(self) -> str:
        """How an online teacher is held: zero3 (sharded) or replicated."""
        if self.online_teacher != "auto":
            return self.online_teacher
        return "zero3" if self.engine == "deepspeed" else "replicated"


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class TrainingConfig:
    """The student's training recipe (what a TRL or DistillKit user sets)."""

    precision: str = "auto"  # auto = bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is the global batch)
    clip_norm: float = 1.0  # gradient clipping (0 = off)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05  # share of steps with a linear LR warm-up
    schedule: str = "cosine"  # cosine | linear | constant, after warm-up
    min_lr_ratio: float = 0.1  # the cosine / linear decay ends at lr × this
    gradient_checkpointing: bool = False
    max_seq_len: int = 1024  # prompt + response tokens per sequence (longer prompts cut left)
    chunk_tokens: int = 4096  # the KD loss is computed over chunks of this many positions
    checkpoint_every: int = 0  # Ray Train checkpoint every N steps (0 = only at the end)
    max_failures: int = 1  # worker-group restarts Ray Train tries, from the last checkpoint

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"training.precision {self.precision!r} unknown; valid: "
                              f"{', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"training.schedule {self.schedule!r} unknown; valid: "
                              f"{', '.join(SCHEDULES)}")
        _positive("training.grad_accum", self.grad_accum)
        _positive("training.max_seq_len", self.max_seq_len)
        _positive("training.chunk_tokens", self.chunk_tokens)
        for name in ("clip_norm", "weight_decay", "checkpoint_every", "max_failures"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("training.warmup_ratio must lie in [0, 1) and "
                              "training.min_lr_ratio in [0, 1]")


ENGINES = ("hf", "vllm", "auto")


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 8
    batch_size: int = 256
    num_actors: int = 1  # 0 = one per GPU in the cluster (or one per node without GPUs)
    gpus_per_actor: int = 1  # > 1 shards a teacher too big for one GPU (device_map="auto")
    # Logit caching: an actor pool (Ray Data, a whole teacher per actor) or zero3, a Ray Train
    # job of num_actors workers over one ZeRO-3-sharded teacher (for a teacher > one GPU).
    cache_engine: str = "pool"
    # HF logit caching applies the output layer to this many response positions at a time (its
    # logits over the vocabulary exist only per chunk: about 6 B × rows per position in bf16);
    # the cache's content does not depend on it.
    cache_chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    # The teacher's inference engine: hf (transformers generate, static batches), vllm
    # (continuous batching, paged KV cache; top-k logprobs come back with each generated token,
    # so synthetic data and its logit cache are one pass), or auto (vllm where it is installed
    # and serves this model, else hf; the run says which and why).
    engine: str = "hf"
    # Sampling, as a practitioner sets it (all in the synthetic data's content address):
    # temperature 0 = greedy; n completions per prompt (n > 1 needs temperature > 0); seed
    # None = the experiment's seed; stop = strings that end a completion (cut before them).
    temperature: float = 0.0
    top_p: float = 1.0
    # Stated, never inherited: the checkpoint's generation_config.json (Qwen2.5-Instruct's asks
    # for top_k 20 and repetition_penalty 1.05) is read for stop ids only. top_k 0 = off;
    # repetition_penalty 1 = none (it applies to greedy decoding too).
    top_k: int = 0
    repetition_penalty: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # vLLM's share of accelerator memory for weights + KV cache (on its CPU backend: of host
    # memory); 0 = auto (0.9 on a GPU, 0.1 on CPU, where the 0.9 default refuses to start).
    gpu_memory_utilization: float = 0.0

    def __post_init__(self) -> None:
        _positive("generation.max_new_tokens", self.max_new_tokens)
        _positive("generation.batch_size", self.batch_size)
        _positive("generation.gpus_per_actor", self.gpus_per_actor)
        if isinstance(self.cache_chunk_tokens, bool) or not isinstance(
                self.cache_chunk_tokens, int) or self.cache_chunk_tokens < 1:
            raise ConfigError("generation.cache_chunk_tokens must be an integer >= 1 (response "
                              f"positions per output-layer chunk), got {self.cache_chunk_tokens!r}")
        _positive("generation.n", self.n)
        if self.engine not in ENGINES:
            raise ConfigError(f"generation.engine {self.engine!r} unknown; valid: "
                              f"{', '.join(ENGINES)}")
        if isinstance(self.stop, str):
            raise ConfigError(f"generation.stop must be a list of strings, got {self.stop!r}; "
                              f"write [{self.stop!r}]")
        if not (isinstance(self.temperature, (int, float)) and not isinstance(
                self.temperature, bool) and 0 <= self.temperature <= 2):
            raise ConfigError("generation.temperature must lie in [0, 2] (0 = greedy; vLLM's "
                              f"range), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"generation.top_p must lie in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool)
                and self.top_k >= 0):
            raise ConfigError(f"generation.top_k must be an integer >= 0 (0 = off), got "
                              f"{self.top_k!r}")
        if not (isinstance(self.repetition_penalty, (int, float))
                and not isinstance(self.repetition_penalty, bool)
                and 0 < self.repetition_penalty <= 2):
            raise ConfigError("generation.repetition_penalty must lie in (0, 2] (1 = none), got "
                              f"{self.repetition_penalty!r}")
        if self.n > 1 and self.temperature == 0:
            raise ConfigError(f"generation.n = {self.n} with temperature 0 writes {self.n} "
                              "identical greedy completions; set generation.temperature > 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"generation.stop must be non-empty strings, got {self.stop!r}")
        if not (isinstance(self.gpu_memory_utilization, (int, float))
                and 0 <= self.gpu_memory_utilization < 1):
            raise ConfigError("generation.gpu_memory_utilization must lie in [0, 1) (0 = auto), "
                              f"got {self.gpu_memory_utilization!r}")
        if self.cache_engine not in ("pool", "zero3"):
            raise ConfigError(f"generation.cache_engine {self.cache_engine!r} unknown; valid: "
                              "pool, zero3")
        if self.num_actors < 0:
            raise ConfigError(f"generation.num_actors must be >= 0, got {self.num_actors}")


@dataclass(frozen=True)
class EvalConfig:
    lm_eval: bool = True  # score with lm_eval.simple_evaluate (a task made from the test split)
    lm_eval_tasks: tuple[str, ...] = ()  # installed lm-eval tasks by name (need their data)
    lm_eval_include: tuple[str, ...] = ()  # directories of local task YAMLs (work offline)
    lm_eval_chat_template: bool = False  # named tasks through the model's chat template
    limit: int = 200
    inference_prompts: int = 100  # fixed prompt set for inference EPT (teacher and student)
    # The inference probe repeats (after one untimed warm-up pass) until its window lasts this
    # long: a window of a few sample periods is interpolation, not a measurement of EPT.
    inference_min_s: float = 3.0
    # GPUs of the evaluation task (it loads teacher and student, layers split over them with
    # device_map="auto"; the inference probes run there too). 0 = generation.gpus_per_actor,
    # the GPUs one teacher actor needs.
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ConfigError(f"evaluation.gpus must be >= 0 (0 = generation.gpus_per_actor), "
                              f"got {self.gpus}")
        _positive("evaluation.limit", self.limit)
        _positive("evaluation.inference_prompts", self.inference_prompts)
        _positive("evaluation.inference_min_s", self.inference_min_s)


@dataclass(frozen=True)
class HardwareConfig:
    """The GPUs the config is written for: what `--dry-run` checks the memory estimate against
    (the run itself uses whatever the Ray cluster has)."""

    gpu: str = "any"  # e.g. H100-SXM-80GB
    gpu_memory_gib: float = 80.0
    gpus: int = 0  # in the cluster (0 = distill.num_workers)

    def __post_init__(self) -> None:
        _positive("hardware.gpu_memory_gib", self.gpu_memory_gib)
        if self.gpus < 0:
            raise ConfigError(f"hardware.gpus must be >= 0, got {self.gpus}")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "tiny"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    footprint: FootprintConfig = field(default_factory=FootprintConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    baseline: bool = True  # also train the student without a teacher (the honest comparison)

    def __post_init__(self) -> None:
        if self.student.gpus:
            raise ConfigError(f"student.gpus {self.student.gpus}: the student's GPUs are its "
                              "Ray Train workers; set distill.num_workers instead")


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(ExperimentConfig, data)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


__all__ = [
    "DistillConfig",
    "ExperimentConfig",
    "FootprintConfig",
    "SamplingConfig",
    "apply_overrides",
    "from_dict",
    "load_experiment",
    "load_yaml",
    "to_dict",
]
