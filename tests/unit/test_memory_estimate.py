"""Per-GPU memory estimate: exact parameter counts against published totals, the ZeRO paper's
accounting, monotonicity in batch, sequence, world size and stage, the printed table."""

import subprocess
import sys
from dataclasses import replace

import pytest

from raydistill.errors import ConfigError
from raydistill.memory import (
    GIB,
    Architecture,
    TrainingPlan,
    count_params,
)
from raydistill.memory_estimate import estimate_memory, format_memory_plan

# config.json of the published checkpoints, reduced to the keys that shape the parameters
LLAMA_31_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
               "vocab_size": 128256, "tie_word_embeddings": False}
LLAMA_32_1B = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
               "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
               "vocab_size": 128256, "tie_word_embeddings": True, "head_dim": 64}
QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
              "vocab_size": 151936, "tie_word_embeddings": True}
QWEN25_15B = {"model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28,
              "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960,
              "vocab_size": 151936, "tie_word_embeddings": True}

# the required demonstration: 8B teacher online, ZeRO-3 inference over 8 workers, 1B student
FITS = TrainingPlan(world_size=8, gpu_memory_gib=80, zero_stage=3, precision="bf16",
                    micro_batch_size=4, max_seq_len=2048, gradient_checkpointing=True,
                    method="logit", teacher="online", teacher_sharded=True,
                    loss_chunk_tokens=1024)
# a full bf16 teacher per GPU, ZeRO-0 student, no checkpointing, batch 8
DOES_NOT_FIT = replace(FITS, teacher_sharded=False, zero_stage=0, gradient_checkpointing=False,
                       micro_batch_size=8)


def states(m) -> int:
    t = m.training
    return t.student_weights_bytes + t.gradients_bytes + t.optimizer_states_bytes


@pytest.mark.parametrize("cfg,published", [(LLAMA_31_8B, 8_030_261_248),
                                           (LLAMA_32_1B, 1_235_814_400),
                                           (QWEN25_05B, 494_032_768),
                                           (QWEN25_15B, 1_543_714_304)])
def test_parameter_counts_match_published_totals(cfg, published):
    assert count_params(cfg) == published


def test_llama_8b_by_hand():
    # embedding 128256·4096, untied head, per layer q,o 4096² + k,v 4096·1024 + MLP 3·4096·14336
    # + 2 norms, final norm
    layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert count_params(LLAMA_31_8B) == 2 * 128256 * 4096 + 32 * layer + 4096


def test_qwen2_counts_qkv_biases_and_fallback_reads_llama_keys():
    as_llama = {**QWEN25_05B, "model_type": "llama"}
    assert count_params(QWEN25_05B) - count_params(as_llama) == 24 * (896 + 2 * 128)
    generic = {**as_llama, "model_type": "somethingelse"}
    assert count_params(generic) == count_params(as_llama)
    biased = {**generic, "attention_bias": True, "mlp_bias": True}
    assert count_params(biased) - count_params(generic) == 24 * (896 + 2 * 128 + 896
                                                                 + 2 * 4864 + 896)


def test_untied_head_adds_one_embedding():
    untied = {**LLAMA_32_1B, "tie_word_embeddings": False}
    assert count_params(untied) - count_params(LLAMA_32_1B) == 128256 * 2048


def test_eight_b_teacher_online_with_one_b_student_fits_on_8x80():
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, FITS)
    assert m.fits and m.training.fits and m.training.total_gib < 0.9 * 80
    s, t = Architecture.from_hf_config(LLAMA_32_1B), Architecture.from_hf_config(LLAMA_31_8B)
    # ZeRO-3: 16Ψ/N plus the largest gathered unit (the 1B's embedding) in bf16
    assert states(m) == 2 * s.params // 8 * 2 + 12 * s.params // 8 + 2 * s.embedding_params
    assert m.training.teacher_weights_bytes == 2 * (t.params // 8 + t.embedding_params)
    table = format_memory_plan(m)
    assert "training worker (x8 GPUs)" in table and "does not fit" not in table
    assert "72.00 GiB usable of 80 GiB" in table


def test_unsharded_teacher_zero0_no_checkpointing_does_not_fit():
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, DOES_NOT_FIT)
    assert not m.fits and not m.training.fits
    assert m.training.teacher_weights_bytes == 2 * 8_030_261_248  # ~16 GB per GPU
    assert states(m) == 16 * 1_235_814_400  # the ZeRO paper's 16Ψ, nothing partitioned
    last = format_memory_plan(m).splitlines()[-1]
    assert m.training.largest_line[0] == "activations"
    assert last.startswith("training worker does not fit: largest line is activations (")
    assert last.endswith("turn on gradient_checkpointing")


def test_table_is_aligned_with_two_decimals():
    lines = format_memory_plan(estimate_memory(LLAMA_31_8B, LLAMA_32_1B, FITS)).splitlines()
    rows = [line for line in lines if line.startswith("  ")]
    assert len({line.index(" GiB") for line in rows}) == 1
    assert all(line.split(" GiB")[0].split()[-1].split(".")[1].isdigit()
               and len(line.split(" GiB")[0].split(".")[-1]) == 2 for line in rows)


@pytest.mark.parametrize("field", ["micro_batch_size", "max_seq_len"])
@pytest.mark.parametrize("ckpt", [True, False])
def test_estimate_grows_with_batch_and_sequence(field, ckpt):
    base = replace(FITS, gradient_checkpointing=ckpt)
    totals = [estimate_memory(LLAMA_31_8B, LLAMA_32_1B,
                              replace(base, **{field: getattr(base, field) * f})).training
              .total_bytes for f in (1, 2, 4)]
    assert totals == sorted(totals) and len(set(totals)) == 3


def test_zero3_shrinks_with_world_size():
    totals = [estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, world_size=n)).training
              .total_bytes for n in (1, 2, 4, 8, 16)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 5


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_zero_stages_are_monotone(precision):
    by_stage = [states(estimate_memory(LLAMA_31_8B, LLAMA_32_1B,
                                       replace(FITS, zero_stage=z, precision=precision)))
                for z in (3, 2, 1, 0)]
    assert by_stage == sorted(by_stage) and len(set(by_stage)) == 4
    psi = count_params(LLAMA_32_1B)
    assert by_stage[-1] == 16 * psi  # 2+2+12 mixed, 4+4+8 fp32: both 16 bytes/param


def test_checkpointing_and_chunking_follow_their_formulas():
    s = Architecture.from_hf_config(LLAMA_32_1B)
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, FITS)
    tokens, layer = 4 * 2048, 8 * 2048 + 5 * 32 * 64 + 4 * 8192
    assert s.layer_activation_elements(2048) == layer
    assert m.training.activations_bytes == tokens * 2 * (16 * 2048 + layer)
    # logits bf16 + 6 fp32 copies (CE, student and online teacher log-softmax) of one chunk
    assert m.training.logits_bytes == tokens * 128256 * 2 + 6 * 1024 * 128256 * 4
    unchunked = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, loss_chunk_tokens=0))
    assert unchunked.training.logits_bytes == tokens * 128256 * 2 + 6 * tokens * 128256 * 4
    eager = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, flash_attention=False))
    assert eager.training.activations_bytes > m.training.activations_bytes


def test_cached_teacher_leaves_training_and_runs_in_actors():
    plan = replace(FITS, teacher="cached", top_k=32, gpus_per_actor=2, generation_batch_size=16)
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, plan)
    assert m.training.teacher_weights_bytes == m.training.teacher_outputs_bytes == 0
    assert m.generation is not None and m.caching is not None
    assert m.generation.weights_bytes == 2 * 8_030_261_248 // 2
    assert m.generation.kv_cache_bytes == 16 * 2048 * (2 * 32 * 1024 * 2) // 2  # K,V per layer
    # HF caching is chunked (distill.cache_topk): one chunk of 4,096 positions over the
    # vocabulary, fp32 + bf16, not the batch's 16 × 2,048 positions at once
    assert m.caching.kv_cache_bytes == 0
    transient = m.caching.activations_bytes + m.caching.logits_bytes
    assert 4096 * 128256 * 6 <= transient < 16 * 2048 * 128256 * 6 // 4
    assert "teacher caching actor (2 GPUs each)" in format_memory_plan(m)


def test_no_teacher_for_the_baseline():
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, method="none"))
    assert m.generation is None and m.caching is None and m.training.teacher_weights_bytes == 0


def test_feature_kd_trains_projectors_and_keeps_teacher_states():
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, method="feature", zero_stage=0))
    logit = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, method="logit", zero_stage=0))
    assert states(m) - states(logit) == 16 * 16 * (2048 + 1) * 4096  # one Linear per layer
    assert m.training.teacher_outputs_bytes != logit.training.teacher_outputs_bytes


@pytest.mark.parametrize("change,advice", [
    ({"zero_stage": 0, "micro_batch_size": 1, "max_seq_len": 128, "gpu_memory_gib": 16},
     "raise zero_stage to 1"),
    ({"loss_chunk_tokens": 0, "micro_batch_size": 16}, "chunk the loss (loss_chunk_tokens)"),
    ({"micro_batch_size": 128}, "; lower batch_size"),
])
def test_advice_names_what_to_change(change, advice):
    plan = replace(FITS, teacher="cached", gpus_per_actor=8, generation_batch_size=1, **change)
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, plan)
    assert not m.training.fits and m.generation.fits and m.caching.fits
    last = format_memory_plan(m).splitlines()[-1]
    assert last.startswith("training worker does not fit") and last.endswith(advice)


def test_teacher_actor_too_big_asks_for_more_gpus_per_actor():
    m = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(FITS, gpu_memory_gib=16))
    assert m.generation is not None and not m.generation.fits
    assert "largest line is teacher weights" in format_memory_plan(m)
    assert "raise gpus_per_actor to" in format_memory_plan(m)


@pytest.mark.parametrize("change,match", [
    ({"world_size": 0}, r"world_size must be an integer >= 1, got 0"),
    ({"gpus_per_actor": None}, r"gpus_per_actor must be an integer >= 1, got None"),
    ({"generation_batch_size": 0}, r"generation_batch_size must be an integer >= 1"),
    ({"precision": "fp8"}, r"precision 'fp8' unknown; valid: bf16, fp16, fp32"),
    ({"zero_stage": 4}, r"zero_stage 4 unknown; valid: 0, 1, 2, 3"),
    ({"method": "magic"}, r"method 'magic' unknown; valid: none, sft, logit, feature, relational"),
    ({"teacher": "remote"}, r"teacher 'remote' unknown; valid: online, cached"),
    ({"gpu_memory_gib": 0}, r"gpu_memory_gib must be > 0"),
    ({"teacher": "cached", "method": "feature"}, r"valid teacher: online"),
    ({"teacher": "cached", "top_k": 0}, r"top_k >= 1"),
])
def test_bad_plan_raises_one_line_config_error(change, match):
    with pytest.raises(ConfigError, match=match) as info:
        replace(FITS, **change)
    assert "\n" not in str(info.value)


def test_bad_model_config_lists_the_needed_keys():
    with pytest.raises(ConfigError, match=r"lacks a positive vocab_size; .* needs: hidden_size"):
        count_params({k: v for k, v in LLAMA_32_1B.items() if k != "vocab_size"})
    with pytest.raises(ConfigError, match=r"do not divide"):
        count_params({**LLAMA_32_1B, "num_key_value_heads": 5})


def test_gib_is_binary():
    assert GIB == 1024**3


def test_memory_module_is_pure():
    code = ("import sys, raydistill.memory; heavy = {'torch', 'ray', 'transformers', 'deepspeed'}; "
            "assert not heavy & {m.split('.')[0] for m in sys.modules}, 'memory imported them'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("precision,total_psi", [("bf16", 18), ("fp32", 16)])
def test_ddp_keeps_fp32_parameters_and_autocast_copies(precision, total_psi):
    """DDP trains fp32 parameters under autocast (fp32 master weights, not pure bf16 AdamW):
    4Ψ weights + 2Ψ autocast copies + 4Ψ gradients + 8Ψ AdamW = 18Ψ in bf16, against ZeRO-0's
    16Ψ (2Ψ + 2Ψ + 12Ψ); in fp32 both are 16Ψ."""
    s = Architecture.from_hf_config(LLAMA_32_1B)
    plan = replace(FITS, zero_stage=0, precision=precision)
    ddp = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, replace(plan, engine="ddp")).training
    zero0 = estimate_memory(LLAMA_31_8B, LLAMA_32_1B, plan).training
    states = ddp.student_weights_bytes + ddp.gradients_bytes + ddp.optimizer_states_bytes
    assert states == total_psi * s.params
    assert zero0.student_weights_bytes + zero0.gradients_bytes + zero0.optimizer_states_bytes == \
        16 * s.params
    with pytest.raises(ConfigError, match="engine 'fsdp' unknown; valid: deepspeed, ddp"):
        replace(plan, engine="fsdp")
