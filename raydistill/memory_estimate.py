"""Per-GPU memory estimate of a distillation run, for `raydistill run CONFIG --dry-run`: one
formula per role (its terms in `memory.py`), each naming its source; `estimate_memory` puts
them together and `format_memory_plan` prints them with what to change when one does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raydistill.memory import (
    DTYPE_BYTES,
    EVAL_BATCH,
    GIB,
    TEACHER_BYTES,
    VLLM_BATCHED_TOKENS,
    Architecture,
    EvaluationMemory,
    MemoryPlan,
    TeacherActorMemory,
    TeacherBuildMemory,
    TrainingPlan,
    TrainingWorkerMemory,
    _Role,
)


def _training_states(psi: int, s: Architecture, p: TrainingPlan) -> tuple[int, int, int]:
    """Weights, gradients, AdamW states per GPU (Rajbhandari et al. 2020, ZeRO, §5).

    Mixed precision: 2Ψ weights + 2Ψ gradients + 12Ψ (fp32 master copy, m, v) = 16Ψ; fp32:
    4Ψ + 4Ψ + 8Ψ. Stage 1 divides the optimizer states by N, stage 2 also the gradients,
    stage 3 also the weights, which then add the largest layer gathered for compute.
    DDP below fp32 (distill.engine.autocast_forward) keeps fp32 parameters and gradients and
    AdamW's two fp32 states, and autocast caches a low-precision copy of each weight for the
    step: 4Ψ + bΨ weights + 4Ψ gradients + 8Ψ states, nothing divided.
    """
    b, n, z = DTYPE_BYTES[p.precision], p.world_size, p.zero_stage
    if p.engine == "ddp":
        return 4 * psi + (b * psi if b < 4 else 0), 4 * psi, 8 * psi
    opt = (8 if b == 4 else 12) * psi
    weights = b * psi // n + b * s.largest_gathered_params if z >= 3 else b * psi
    return weights, b * psi // n if z >= 2 else b * psi, opt // n if z >= 1 else opt


def _activations(s: Architecture, t: Architecture, p: TrainingPlan) -> int:
    """All layers' activations, or with checkpointing (HF checkpoints every decoder layer)
    each layer's input B·T·h plus one layer recomputed in full; feature KD keeps its projected
    student states (L_s·B·T·h_teacher)."""
    b, layer = DTYPE_BYTES[p.precision], s.layer_activation_elements(p.max_seq_len,
                                                                     p.flash_attention)
    kept = s.num_layers * s.hidden_size + layer if p.gradient_checkpointing else (
        s.num_layers * layer)
    projected = s.num_layers * t.hidden_size if p.method == "feature" else 0
    return p.tokens * b * (kept + projected)


def _logits(s: Architecture, p: TrainingPlan) -> int:
    """B·T·V logits in the compute dtype, plus fp32 [rows, V] copies of the loss: each
    log-softmax holds 2 (fp32 upcast, output); CE has one, logit KD adds the student's at
    temperature and, online, the teacher's. rows = one chunk when chunked, else B·T.
    A cached batch adds its top-k (int32 index + bf16 value per entry)."""
    copies = 2 + (0 if p.method != "logit" else 2 if p.teacher == "cached" else 4)
    rows = min(p.loss_chunk_tokens, p.tokens) if p.loss_chunk_tokens else p.tokens
    cached = p.tokens * p.top_k * 6 if p.method == "logit" and p.teacher == "cached" else 0
    return p.tokens * s.vocab_size * DTYPE_BYTES[p.precision] + copies * rows * s.vocab_size * 4 \
        + cached


def _teacher_in_training(t: Architecture, p: TrainingPlan) -> tuple[int, int]:
    """Weights: params/N + the largest gathered layer (ZeRO-3 inference), or a full copy.
    Outputs: logits B·T·V (logit KD) or all hidden states (L+1)·B·T·h (feature/relational),
    plus one layer's working set under no_grad (bounded by its training activations)."""
    if not p.teacher_in_training:
        return 0, 0
    b = TEACHER_BYTES
    weights = (t.params // p.world_size + t.largest_gathered_params) * b if p.teacher_sharded \
        else t.params * b
    kept = t.vocab_size if p.method == "logit" else (t.num_layers + 1) * t.hidden_size
    layer = t.layer_activation_elements(p.max_seq_len, p.flash_attention)
    return weights, p.tokens * b * (kept + layer)


def _actor(t: Architecture, p: TrainingPlan, usable: int, caching: bool) -> TeacherActorMemory:
    """Weights and KV cache divided over gpus_per_actor (device_map="auto" splits the layers,
    vLLM's tensor parallelism the heads); one layer's working set and the logits sit on one GPU
    (an upper bound under tensor parallelism). Generation keeps B·V last-token logits; HF
    caching forwards whole sequences, B·T·V in bf16 + fp32 (the temperature softmax). vLLM puts
    at most VLLM_BATCHED_TOKENS tokens through a step, which bounds its activations and its
    prompt logprobs."""
    b, g = TEACHER_BYTES, p.gpus_per_actor
    batch = p.generation_batch_size or p.micro_batch_size
    seq = p.generation_seq_len or p.max_seq_len
    vllm = (p.caching_engine if caching else p.generation_engine) == "vllm"
    step_tokens = min(batch * seq, VLLM_BATCHED_TOKENS) if vllm else batch * seq
    kv_width = t.num_kv_heads * t.head_dim  # K and V of every layer per token
    kv = 0 if caching and not vllm else batch * seq * 2 * t.num_layers * kv_width * b // g
    rows = step_tokens if caching else batch
    # zero3 caching (distill.sharded_cache): a shard per worker + the largest gathered layer
    weights = (t.params // p.caching_workers + t.largest_gathered_params) * b \
        if caching and p.caching_engine == "zero3" else t.params * b // g
    if caching and p.caching_engine == "hf":
        return _hf_caching_actor(t, p, usable, weights)
    return TeacherActorMemory(
        weights_bytes=weights, kv_cache_bytes=kv,
        activations_bytes=step_tokens * b * t.layer_activation_elements(seq, p.flash_attention),
        logits_bytes=rows * t.vocab_size * (b + 4), usable_bytes=usable)


def _hf_caching_actor(t: Architecture, p: TrainingPlan, usable: int,
                      weights: int) -> TeacherActorMemory:
    """HF caching (distill.cache_topk) runs the body over a few rows at a time and the output
    layer over cache_chunk_tokens positions at a time: its transient peak is
    cache_memory.hf_cache_peak's (checked against a measured peak in test_cache_memory), split
    here into the body's phases and the chunk's so that the two lines add up to that peak.
    The output rows stand for the tokenizer's (an upper bound: the padding is not cached)."""
    from raydistill.cache_memory import CacheShape, hf_cache_peak

    batch = p.generation_batch_size or p.micro_batch_size
    response = min(p.response_tokens or p.max_seq_len, p.max_seq_len)
    peak = hf_cache_peak(CacheShape(
        hidden=t.hidden_size, layers=t.num_layers, vocab_rows=t.vocab_size, batch=batch,
        seq=p.max_seq_len, response_positions=batch * response,
        chunk_tokens=p.cache_chunk_tokens, top_k=p.top_k, dtype="bf16",
        intermediate=t.intermediate_size, kv_dim=t.num_kv_heads * t.head_dim,
        response_width=response, tied=t.tied_embeddings))
    body = max(peak.body_bytes, peak.hidden_bytes)
    return TeacherActorMemory(weights_bytes=weights, kv_cache_bytes=0, activations_bytes=body,
                              logits_bytes=peak.transient_bytes - body, usable_bytes=usable)


def _teacher_build(t: Architecture, p: TrainingPlan, usable: int) -> TeacherBuildMemory | None:
    """The teacher fine-tuned (distill.stages.train_lm) with its layers split over
    teacher_build_gpus: fp32 master weights, fp32 gradients, AdamW m and v (16Ψ, the ZeRO
    paper's mixed-precision count, §3.1) and every layer's bf16 activations (no checkpointing),
    divided over the GPUs; the logits and their two fp32 log-softmax copies on the last one."""
    k = p.teacher_build_gpus
    if not k:
        return None
    tokens = p.teacher_build_batch_size * (p.teacher_build_seq_len or p.max_seq_len)
    layer = t.layer_activation_elements(p.teacher_build_seq_len or p.max_seq_len,
                                        p.flash_attention)
    return TeacherBuildMemory(
        weights_bytes=4 * t.params // k, gradients_bytes=4 * t.params // k,
        optimizer_states_bytes=8 * t.params // k,
        activations_bytes=tokens * TEACHER_BYTES * t.num_layers * layer // k,
        logits_bytes=tokens * t.vocab_size * (TEACHER_BYTES + 2 * 4), usable_bytes=usable)


def _evaluation(t: Architecture, s: Architecture, p: TrainingPlan, usable: int,
                uses_teacher: bool) -> EvaluationMemory:
    """distill.stages.evaluate_remote: both models in bf16, the teacher's layers split over
    eval_gpus, the student whole on the first GPU (device_map "sequential": its probe meters
    that GPU alone), so the first GPU holds a teacher share and the whole student;
    EVAL_BATCH sequences of prompt + new tokens. The larger model's KV cache and one layer's
    working set; lm-eval's loglikelihood forward keeps B·T·V logits and their log-softmax in the
    model's dtype on the GPU that holds the output layer."""
    e, b = p.eval_gpus, TEACHER_BYTES
    seq = p.generation_seq_len or p.max_seq_len
    big = t if uses_teacher else s
    kv = EVAL_BATCH * seq * 2 * big.num_layers * big.num_kv_heads * big.head_dim * b // e
    vocab = max(t.vocab_size, s.vocab_size) if uses_teacher else s.vocab_size
    return EvaluationMemory(
        teacher_weights_bytes=t.params * b // e if uses_teacher else 0,
        student_weights_bytes=s.params * b, kv_cache_bytes=kv,
        activations_bytes=EVAL_BATCH * seq * b * big.layer_activation_elements(
            seq, p.flash_attention),
        logits_bytes=EVAL_BATCH * seq * vocab * 2 * b, usable_bytes=usable)


def estimate_memory(teacher: Mapping[str, Any] | Architecture,
                    student: Mapping[str, Any] | Architecture, plan: TrainingPlan) -> MemoryPlan:
    """Per-GPU memory of every role of the run; see `format_memory_plan` to print it."""
    t, s = (m if isinstance(m, Architecture) else Architecture.from_hf_config(m)
            for m in (teacher, student))
    p = plan
    usable = int(p.gpu_memory_gib * GIB * (1 - p.headroom_fraction))
    projector = s.num_layers * (s.hidden_size + 1) * t.hidden_size if p.method == "feature" else 0
    weights, grads, opt = _training_states(s.params + projector, s, p)
    t_weights, t_out = _teacher_in_training(t, p)
    training = TrainingWorkerMemory(weights, grads, opt, _activations(s, t, p), _logits(s, p),
                                    t_weights, t_out, usable_bytes=usable)
    uses_teacher = p.method != "none"
    cached = uses_teacher and p.method == "logit" and p.teacher == "cached"
    # vLLM at temperature 1 writes the cache in the generation pass (pipeline.teacher_side)
    caching = cached and not (p.caching_engine == "vllm" and p.generation_engine == "vllm")
    return MemoryPlan(p, training, _actor(t, p, usable, False) if uses_teacher else None,
                      _actor(t, p, usable, True) if caching else None,
                      _teacher_build(t, p, usable),
                      _evaluation(t, s, p, usable, uses_teacher) if p.eval_gpus else None)


def _advice(label: str, p: TrainingPlan, role: _Role) -> str:
    """What to change when `label` is the largest line of a role that does not fit."""
    if isinstance(role, TeacherBuildMemory):
        return "raise teacher.gpus, or use the teacher as it is (teacher.steps 0)"
    if isinstance(role, EvaluationMemory):
        return "raise evaluation.gpus"
    z, ckpt = p.zero_stage, p.gradient_checkpointing
    need = {"student weights": 3, "gradients": 2, "optimizer states": 1}.get(label)
    if need is not None:  # the stage that partitions this line (ZeRO paper, §5)
        return f"raise zero_stage to {need}" if z < need else "use more GPUs"
    if label == "activations":
        return "lower batch_size or max_seq_len" if ckpt else "turn on gradient_checkpointing"
    if label == "logits + loss":
        return "lower batch_size" if p.loss_chunk_tokens else "chunk the loss (loss_chunk_tokens)"
    if label == "teacher weights" and isinstance(role, TeacherActorMemory):
        g = -(-p.gpus_per_actor * role.total_bytes // role.usable_bytes)  # ceil
        return f"raise gpus_per_actor to {max(g, p.gpus_per_actor + 1)}"
    if label == "teacher weights":
        return "use more GPUs or a cached teacher (top_k)" if p.teacher_sharded \
            else "shard the teacher over the workers (ZeRO-3)"
    if isinstance(role, TeacherActorMemory):
        return "lower the generation batch_size"
    return "lower batch_size or use a cached teacher (top_k)" if p.method == "logit" \
        else "lower batch_size"


def format_memory_plan(plan: MemoryPlan) -> str:
    """An aligned table per role, GiB to 2 decimals; one advice line per role that does not
    fit, naming its largest line and what to change."""
    p, roles = plan.plan, plan.roles()
    width = max(len(label) for _, r in roles for label, _ in r.lines())
    out = [f"per-GPU memory: {plan.training.usable_bytes / GIB:.2f} GiB usable of "
           f"{p.gpu_memory_gib:g} GiB ({p.headroom_fraction:.0%} kept for the CUDA context "
           "and fragmentation)"]
    advice = []
    for name, role in roles:
        out.append(name)
        out += [f"  {label:<{width}}  {b / GIB:>7.2f} GiB" for label, b in role.lines()]
        verdict = "fits" if role.fits else "does NOT fit"
        out.append(f"  {'total':<{width}}  {role.total_gib:>7.2f} GiB  {verdict}")
        if not role.fits:
            label, b = role.largest_line
            advice.append(f"{name.split(' (')[0]} does not fit: largest line is {label} "
                          f"({b / GIB:.2f} GiB); {_advice(label, p, role)}")
    return "\n".join(out + list(plan.notes()) + advice + list(plan.unplaceable()))
