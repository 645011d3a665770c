"""The terms of the per-GPU memory estimate (`raydistill run CONFIG --dry-run`): a model's
architecture, how the run is laid out, what each role holds; the formulas that fill them are
in `memory_estimate.py`.

Pure arithmetic on plain data (a Hugging Face `config.json` dict per model, a `TrainingPlan`).
Each role's total is an upper-bound sum of what one GPU holds at the peak of a step; every
formula names its source. Bytes are exact integers; GiB = 2**30 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from raydistill.config import METHODS
from raydistill.errors import ConfigError

GIB = 2**30
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
TEACHER_BYTES = 2  # raydistill.distill.teacher loads every teacher on GPU in bf16
TEACHER_MODES = ("online", "cached")
ENGINES = ("hf", "vllm", "zero3")  # what runs a teacher actor (zero3: caching only)
# vLLM's scheduler puts at most this many tokens through the model per step (chunked prefill):
# EngineArgs' default max_num_batched_tokens for the LLM class on GPUs of >= 70 GB (8,192 below;
# vllm/engine/arg_utils.py), so its activations and prompt logprobs are bounded by it, not by
# the batch. The larger figure keeps the estimate an upper bound.
VLLM_BATCHED_TOKENS = 16384
EVAL_BATCH = 64  # raydistill.distill.evaluate: exact_match's and lm-eval's batch_size
QKV_BIAS_FAMILIES = ("qwen2",)  # Qwen2 has biases on q, k, v (not o); Llama/Mistral none
QK_NORM_FAMILIES = ("qwen3",)  # Qwen3 normalises q and k per head (two head_dim weights)
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size")


def _fail(msg: str) -> NoReturn:
    raise ConfigError(f"memory plan: {msg}")


@dataclass(frozen=True)
class Architecture:
    """A decoder-only LM in the Llama layout (RMSNorm, GQA attention, gated MLP).

    Llama, Mistral, Qwen2 and Qwen3 are counted exactly; other `model_type`s fall back to this
    layout, reading the optional `attention_bias` and `mlp_bias` keys as Llama does.
    """

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> Architecture:
        missing = [k for k in _REQUIRED if not isinstance(cfg.get(k), int) or cfg[k] < 1]
        if missing:
            _fail(f"model config lacks a positive {', '.join(missing)}; a config.json "
                  f"needs: {', '.join(_REQUIRED)}")
        kind, h = str(cfg.get("model_type", "")), cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or h // heads
        kv = cfg.get("num_key_value_heads") or heads
        if heads % kv or (h % heads and not cfg.get("head_dim")):
            _fail(f"{kind or 'model'}: {heads} heads, {kv} kv heads and hidden {h} do not divide")
        bias = bool(cfg.get("attention_bias", False))
        return cls(kind, h, cfg["num_hidden_layers"], heads, kv, head_dim,
                   cfg["intermediate_size"], cfg["vocab_size"],
                   bool(cfg.get("tie_word_embeddings", False)),  # Llama/Qwen2 class default
                   qkv_bias=bias or kind in QKV_BIAS_FAMILIES, o_bias=bias,
                   mlp_bias=bool(cfg.get("mlp_bias", False)), qk_norm=kind in QK_NORM_FAMILIES)

    @property
    def layer_params(self) -> int:
        """q, k, v, o projections (GQA), gate/up/down MLP, two RMSNorms (+ biases, q/k norms)."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        return attn + mlp + 2 * h + 2 * self.head_dim * self.qk_norm

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """Embedding + layers + final norm + lm_head unless tied to the embedding."""
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + self.num_layers * self.layer_params + self.hidden_size + head

    @property
    def largest_gathered_params(self) -> int:
        """The biggest unit ZeRO-3 gathers at once: one decoder layer or the (un)embedding."""
        return max(self.layer_params, self.embedding_params)

    def layer_activation_elements(self, seq_len: int, flash_attention: bool = True) -> int:
        """Elements one layer keeps for backward per token, in the compute dtype.

        Counted the way Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
        Transformer Models", §4.1) count a GPT layer, but for Hugging Face's Llama/Qwen2 layer
        with SDPA (flash or memory-efficient kernels: no T×T scores are stored):
        two RMSNorms 4h each (fp32 upcast = 2 elements, normalised copy, output), attention
        5·heads·head_dim (q, k and v repeated to every head by `repeat_kv`, SDPA output, the
        contiguous o_proj input), gated MLP 4·I (gate, SiLU, up, product).
        Without flash attention, eager attention adds 3·heads·T (fp32 softmax + its cast copy).
        """
        per_token = 8 * self.hidden_size + 5 * self.num_heads * self.head_dim \
            + 4 * self.intermediate_size
        return per_token + (0 if flash_attention else 3 * self.num_heads * seq_len)


def count_params(hf_config: Mapping[str, Any]) -> int:
    """Exact parameter count of a Llama-layout model from its `config.json` dict."""
    return Architecture.from_hf_config(hf_config).params


@dataclass(frozen=True)
class TrainingPlan:
    """How the run is laid out; the CLI fills this from the experiment config."""

    world_size: int  # Ray Train workers = GPUs of the student job
    gpu_memory_gib: float  # memory of one GPU (e.g. 80)
    zero_stage: int = 2  # the student's DeepSpeed ZeRO stage
    engine: str = "deepspeed"  # deepspeed | ddp (fp32 parameters, autocast below fp32)
    precision: str = "bf16"  # the student's compute dtype: bf16 | fp16 | fp32
    micro_batch_size: int = 1  # sequences per GPU per step
    max_seq_len: int = 2048
    gradient_checkpointing: bool = False
    method: str = "logit"  # none | sft | logit | feature | relational
    teacher: str = "online"  # online: in the training workers; cached: top-k logit cache
    teacher_sharded: bool = True  # online teacher as a ZeRO-3 inference engine over all workers
    top_k: int = 32  # logit cache size (cached teacher)
    loss_chunk_tokens: int = 0  # tokens per chunk of the chunked loss; 0 = unchunked
    flash_attention: bool = True  # SDPA/flash kernels (HF default); False = eager attention
    gpus_per_actor: int = 1  # GPUs one teacher actor spreads its layers over
    generation_batch_size: int | None = None  # sequences per teacher actor call (None = micro)
    generation_seq_len: int | None = None  # prompt + new tokens (None = max_seq_len)
    headroom_fraction: float = 0.10  # kept free for the CUDA context and fragmentation
    generation_engine: str = "hf"  # hf | vllm (tensor parallel over gpus_per_actor)
    caching_engine: str = "hf"  # hf | vllm (one pass with generation) | zero3 (a Ray Train job)
    caching_workers: int = 1  # zero3 caching: GPUs (workers) the teacher is sharded over
    cache_chunk_tokens: int = 4096  # HF caching: positions through the output layer at once
    response_tokens: int | None = None  # HF caching: longest response cached (None = seq len)
    teacher_build_gpus: int = 0  # GPUs of the teacher's fine-tuning task; 0 = no build (steps 0)
    teacher_build_batch_size: int = 1  # sequences per teacher training step (one micro-batch)
    teacher_build_seq_len: int | None = None  # prompt + response tokens (None = max_seq_len)
    teacher_as_is: bool = False  # a pretrained teacher used where it is (steps 0): no build
    eval_gpus: int = 0  # GPUs of the evaluation task, models split over them (0 = not planned)
    cluster_gpus: int = 0  # GPUs in the cluster; a role asking for more cannot be placed (0 = ?)
    # on-policy: GPUs the teacher_scoring pool holds for the whole training, beside the workers
    scoring_gpus: int = 0

    def __post_init__(self) -> None:
        for name in ("world_size", "micro_batch_size", "max_seq_len", "gpus_per_actor",
                     "generation_batch_size", "generation_seq_len", "teacher_build_batch_size",
                     "teacher_build_seq_len", "caching_workers"):
            value = getattr(self, name)  # generation_* may be None (= the training figure)
            optional = value is None and name.startswith(("generation", "teacher_build"))
            if not optional and (type(value) is not int or value < 1):
                _fail(f"{name} must be an integer >= 1, got {value!r}")
        for name, value, valid in (("precision", self.precision, DTYPE_BYTES),
                                   ("method", self.method, METHODS),
                                   ("teacher", self.teacher, TEACHER_MODES),
                                   ("zero_stage", self.zero_stage, (0, 1, 2, 3)),
                                   ("engine", self.engine, ("deepspeed", "ddp")),
                                   ("generation_engine", self.generation_engine, ENGINES[:2]),
                                   ("caching_engine", self.caching_engine, ENGINES)):
            if value not in valid:
                _fail(f"{name} {value!r} unknown; valid: {', '.join(map(str, valid))}")
        if not self.gpu_memory_gib > 0:
            _fail(f"gpu_memory_gib must be > 0, got {self.gpu_memory_gib!r}")
        if min(self.teacher_build_gpus, self.eval_gpus, self.cluster_gpus) < 0:
            _fail("teacher_build_gpus, eval_gpus and cluster_gpus must be >= 0 (0 = not planned"
                  " / unknown)")
        if self.top_k < 0 or self.loss_chunk_tokens < 0:
            _fail("top_k and loss_chunk_tokens must be >= 0 (0 chunk tokens = unchunked)")
        if not 0 <= self.headroom_fraction < 1:
            _fail(f"headroom_fraction must lie in [0, 1), got {self.headroom_fraction!r}")
        if self.teacher == "cached" and self.method in ("feature", "relational"):
            _fail(f"{self.method} KD needs the teacher's hidden states; valid teacher: online")
        if self.teacher == "cached" and self.method == "logit" and self.top_k < 1:
            _fail("a cached teacher needs top_k >= 1 (top_k 0 means an online teacher)")

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.max_seq_len

    @property
    def teacher_in_training(self) -> bool:
        return self.teacher == "online" and self.method in ("logit", "feature", "relational")


def _line(label: str) -> Any:
    return field(metadata={"label": label})


@dataclass(frozen=True)
class _Role:
    """Fields made with `_line` are the lines of the table; `usable_bytes` is the budget
    (GPU memory less the headroom)."""

    usable_bytes: int = field(kw_only=True)

    def lines(self) -> tuple[tuple[str, int], ...]:
        return tuple((f.metadata["label"], getattr(self, f.name)) for f in fields(self)
                     if "label" in f.metadata and getattr(self, f.name))

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.lines())

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    @property
    def largest_line(self) -> tuple[str, int]:
        return max(self.lines(), key=lambda line: line[1])


@dataclass(frozen=True)
class TrainingWorkerMemory(_Role):
    """One Ray Train worker's GPU (the student, and the teacher when it is online)."""

    student_weights_bytes: int = _line("student weights")
    gradients_bytes: int = _line("gradients")
    optimizer_states_bytes: int = _line("optimizer states")
    activations_bytes: int = _line("activations")
    logits_bytes: int = _line("logits + loss")
    teacher_weights_bytes: int = _line("teacher weights")
    teacher_outputs_bytes: int = _line("teacher outputs")


@dataclass(frozen=True)
class TeacherActorMemory(_Role):
    """One GPU of a teacher actor (generation or logit caching), layers over gpus_per_actor."""

    weights_bytes: int = _line("teacher weights")
    kv_cache_bytes: int = _line("KV cache")
    activations_bytes: int = _line("activations (one layer)")
    logits_bytes: int = _line("logits")


@dataclass(frozen=True)
class TeacherBuildMemory(_Role):
    """One GPU of the teacher's fine-tuning task (steps > 0), layers split over its GPUs."""

    weights_bytes: int = _line("teacher weights (fp32 master)")
    gradients_bytes: int = _line("gradients")
    optimizer_states_bytes: int = _line("optimizer states")
    activations_bytes: int = _line("activations")
    logits_bytes: int = _line("logits + loss")


@dataclass(frozen=True)
class EvaluationMemory(_Role):
    """The first GPU of the evaluation task: its share of the teacher's layers (split over the
    task's GPUs) and the whole student; the inference probes run on the same models."""

    teacher_weights_bytes: int = _line("teacher weights")
    student_weights_bytes: int = _line("student weights")
    kv_cache_bytes: int = _line("KV cache")
    activations_bytes: int = _line("activations (one layer)")
    logits_bytes: int = _line("logits (lm-eval loglikelihood)")


@dataclass(frozen=True)
class MemoryPlan:
    """Every role of the run that holds a model, each on its own GPUs; it fits when each role
    fits its GPU and asks for no more GPUs than the cluster has."""

    plan: TrainingPlan
    training: TrainingWorkerMemory
    generation: TeacherActorMemory | None  # None when no teacher runs (method none)
    caching: TeacherActorMemory | None  # None unless logit KD from a top-k cache
    teacher_build: TeacherBuildMemory | None = None  # None when the teacher is not trained
    evaluation: EvaluationMemory | None = None

    def roles(self) -> tuple[tuple[str, _Role], ...]:
        return tuple((name, role) for name, role, _ in self._placed() if role is not None)

    def _placed(self) -> tuple[tuple[str, _Role | None, int], ...]:
        """(name, memory, GPUs it holds at once) per role, in the order the stages run."""
        p = self.plan
        n, g, b, e = p.world_size, p.gpus_per_actor, p.teacher_build_gpus, p.eval_gpus
        c = p.caching_workers
        split = "vLLM tensor parallel" if p.generation_engine == "vllm" else "layers split"
        cache_how = ("vLLM tensor parallel, prompt logprobs" if p.caching_engine == "vllm"
                     else "layers split")
        student = "student" if not p.teacher_in_training else (
            "student + online teacher ZeRO-3 over them" if p.teacher_sharded
            else "student + online teacher replicated")
        return ((f"teacher build (x{_gpus(b)}): fine-tuning, "
                 f"{'layers split' if b > 1 else 'one GPU'}", self.teacher_build, b),
                (f"teacher generation actor ({_gpus(g)} each): {split}", self.generation, g),
                (f"teacher caching actor ({_gpus(g)} each): {cache_how}", self.caching, g)
                if p.caching_engine != "zero3" else
                (f"teacher caching (x{_gpus(c)}): ZeRO-3 sharded over them", self.caching, c),
                (f"training worker (x{_gpus(n)}): {student}"
                 + (f", + teacher scoring pool ({_gpus(p.scoring_gpus)}) beside them"
                    if p.scoring_gpus else ""), self.training, n + p.scoring_gpus),
                (f"evaluation + inference probes (x{_gpus(e)}): "
                 + ("teacher layers split, student on the first GPU" if e > 1
                    else "teacher and student on one GPU"), self.evaluation, e))

    def unplaceable(self) -> tuple[str, ...]:
        """One line per role that asks for more GPUs than `cluster_gpus`."""
        c = self.plan.cluster_gpus
        return tuple(f"{name.split(' (')[0]} asks for {_gpus(k)} but the cluster has {c} "
                     "(hardware.gpus)" for name, role, k in self._placed()
                     if role is not None and c and k > c)

    def notes(self) -> tuple[str, ...]:
        """What a role that holds no GPU does instead (said, not left out silently)."""
        p, out = self.plan, []
        if self.teacher_build is None and p.teacher_as_is:
            out.append("teacher build: none (steps 0: the teacher is the hub model or path "
                       "itself; nothing is loaded or copied)")
        if self.generation is not None and self.caching is None and p.method == "logit" \
                and p.teacher == "cached":
            out.append("teacher caching: written by the generation pass")
        return tuple(out)

    @property
    def fits(self) -> bool:
        return all(r.fits for _, r in self.roles()) and not self.unplaceable()


def _gpus(n: int) -> str:
    return f"{n} GPU{'s' * (n != 1)}"
