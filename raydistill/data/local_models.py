"""Real Qwen2 / Llama models made offline, saved exactly as a hub model is.

Why: tests and a laptop config must exercise the code path of real checkpoints —
`AutoModelForCausalLM.from_pretrained(dir)`, `AutoTokenizer.from_pretrained(dir)`, a BPE
tokenizer with special tokens and a chat template, a `generation_config.json` that stops at the
end-of-turn token — without downloading anything. So we train a byte-level BPE (the same
pre-tokenizer regex as Qwen2 / Llama 3) on a small corpus, give it the family's special tokens
and chat template, and save scaled-down `Qwen2Config` / `LlamaConfig` models with seeded random
weights next to it. A teacher and a student of one family share one tokenizer, so logit KD works;
`llama-other-vocab` has a different vocabulary, for the mismatch path.

Run `python -m raydistill.data.local_models OUT` to build the set into OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydistill.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

FAMILIES = ("qwen2", "llama")
MIN_HEAD_DIM = 32  # vLLM's CPU attention refuses smaller heads
MARKER = "raydistill-local-model.json"
FORMAT = 1  # bump when the build changes, so old directories are rebuilt

# Qwen2-Instruct's template verbatim: ChatML, a default system prompt when none is given.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-Instruct's template verbatim: BOS from the template, content trimmed.
LLAMA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

CHAT_TEMPLATES = {"qwen2": QWEN2_CHAT_TEMPLATE, "llama": LLAMA_CHAT_TEMPLATE}

# Special tokens as the real tokenizers have them, appended after the BPE vocabulary (as there).
SPECIAL_TOKENS: dict[str, dict[str, Any]] = {
    "qwen2": {"tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>"},
    "llama": {"tokens": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"],
              "bos": "<|begin_of_text|>", "eos": "<|eot_id|>",
              "pad": "<|reserved_special_token_0|>"},
}

# Pre-tokenizer regexes of the real tokenizers: Llama 3 groups up to 3 digits, Qwen2 splits each.
_LETTERS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_PATTERNS = {"qwen2": _LETTERS + r"\p{N}" + _REST, "llama": _LETTERS + r"\p{N}{1,3}" + _REST}

MAX_POSITIONS = 512  # the models' max_position_embeddings; the tokenizer truncates to it
DEFAULT_VOCAB_SIZE = 1024
OTHER_VOCAB_SIZE = 768
TEACHER = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 384}
STUDENT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 192}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"model family {family!r} unknown; valid: {', '.join(FAMILIES)}")


def _bpe(texts: Iterable[str], vocab_size: int, family: str):
    """A byte-level BPE (a `tokenizers.Tokenizer`) with `vocab_size` entries, before specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if family == "qwen2":  # as Qwen2's own; transformers' Qwen2Tokenizer adds it on load anyway
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS[family]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, chat_template: str,
                    family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with the family's special tokens and `chat_template`.

    `vocab_size` counts the special tokens, so `len(tokenizer) == vocab_size` when the corpus
    allows that many merges (a smaller corpus gives fewer). Byte-level, so `decode(encode(x))
    == x` for any text (Qwen2 normalises to NFC first, as the real one does). Llama prepends
    BOS on plain encoding as Llama 3 does; its chat template writes BOS itself, and
    `apply_chat_template` encodes without specials, so there is one BOS either way.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    spec = SPECIAL_TOKENS[family]
    if vocab_size <= 256 + len(spec["tokens"]):
        raise ConfigError(f"vocab_size={vocab_size} leaves no room for merges (> 256 bytes + "
                          f"{len(spec['tokens'])} special tokens needed)")
    tok = _bpe(texts, vocab_size - len(spec["tokens"]), family)
    tok.add_special_tokens(spec["tokens"])
    if spec["bos"] is not None:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"],
        pad_token=spec["pad"], chat_template=chat_template, model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False)


def _config(family: str, tokenizer: PreTrainedTokenizerFast, *, vocab_size: int | None = None,
            token_ids: dict[str, Any] | None = None, **kw: Any):
    """The family's config class, scaled down; token ids taken from the tokenizer unless
    `token_ids` gives them (a hub config names ids its tokenizer leaves unset, e.g. Qwen's
    bos_token_id). `vocab_size` (output rows) may exceed the tokenizer, as hub models pad it."""
    from transformers import LlamaConfig, Qwen2Config

    heads, kv = kw["num_attention_heads"], kw["num_key_value_heads"]
    head_dim, rest = divmod(kw["hidden_size"], heads)
    if rest or head_dim < MIN_HEAD_DIM:
        raise ConfigError(f"hidden_size={kw['hidden_size']} / num_attention_heads={heads} must "
                          f"be a whole head_dim >= {MIN_HEAD_DIM}")
    if heads % kv:
        raise ConfigError(f"num_attention_heads={heads} is not a multiple of "
                          f"num_key_value_heads={kv}")
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ConfigError(f"vocab_size={vocab_size} is below the tokenizer's {len(tokenizer)} "
                          "tokens: some ids would have no output row")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, **(token_ids or {}),
           "vocab_size": vocab_size or len(tokenizer)}
    if family == "qwen2":
        return Qwen2Config(**kw, **ids, max_window_layers=kw["num_hidden_layers"])
    return LlamaConfig(**kw, **ids, head_dim=head_dim)


def save_model_dir(out_dir: str | Path, family: str, tokenizer: PreTrainedTokenizerFast, *,
                   hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 2,
                   num_key_value_heads: int | None = None, intermediate_size: int | None = None,
                   max_position_embeddings: int = 512, seed: int = 0,
                   tie_word_embeddings: bool = True, vocab_size: int | None = None,
                   token_ids: dict[str, Any] | None = None,
                   generation: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Save a randomly initialised (seeded) `family` model and `tokenizer` into `out_dir`, as a
    hub checkpoint is laid out: config.json, generation_config.json (stopping at the
    end-of-turn token, or exactly `generation` where given: a hub file's fields), model.
    safetensors (in `dtype`), tokenizer.json, tokenizer_config.json, chat_template.jinja.
    `vocab_size` and `token_ids` as in `_config`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    _check_family(family)
    config = _config(
        family, tokenizer, vocab_size=vocab_size, token_ids=token_ids,
        hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings)
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG left alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(**generation) if generation else GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.to(getattr(torch, dtype))  # seeded in fp32 (the same draw in every dtype), saved in dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _plan(vocab_size: int) -> dict[str, tuple[str, int, dict[str, int]]]:
    """name -> (family, tokenizer vocab size, model shape): the set `make_local_models` builds."""
    plan = {}
    for family in FAMILIES:
        plan[f"{family}-teacher"] = (family, vocab_size, TEACHER)
        plan[f"{family}-student"] = (family, vocab_size, STUDENT)
    plan["llama-other-vocab"] = ("llama", OTHER_VOCAB_SIZE, STUDENT)
    return plan


_BUILT_FILES = ("config.json", "model.safetensors", "tokenizer.json", MARKER)


def _is_built(path: Path, params: dict) -> bool:
    """True when `path` holds a complete build whose marker records exactly `params`."""
    marker = path / MARKER
    if not all((path / f).is_file() for f in _BUILT_FILES):
        return False
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _build(path: Path, family: str, tokenizer: PreTrainedTokenizerFast, shape: dict[str, Any],
           params: dict, **save_kw: Any) -> None:
    """Build next to `path`, then swap it in: a crash never leaves a half-made directory that
    carries a marker, and readers never see one. `save_kw` goes to `save_model_dir`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, family, tokenizer, seed=params["seed"], **shape, **save_kw)
    (tmp / MARKER).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process swapped its own build in first: keep that if it is ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_built(path, params):
            raise


def _default_texts() -> list[str]:
    from raydistill.data.chat_tasks import corpus_for_tokenizer, example_path, read_chat_tasks

    return corpus_for_tokenizer(read_chat_tasks(example_path()))


def make_local_models(out_dir: str | Path, texts: Iterable[str] | None = None, *,
                      vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> dict[str, Path]:
    """Teacher and student directories for each family plus `llama-other-vocab`, under `out_dir`.

    `texts` trains the tokenizers (default: the shipped chat tasks). Idempotent: a directory
    whose marker records the same parameters (corpus digest included) is reused as it is, and
    tokenizers are only trained when some directory needs building.
    """
    texts = list(_default_texts() if texts is None else texts)
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizers: dict[tuple[str, int], Any] = {}
    paths = {}
    for name, (family, vocab, shape) in _plan(vocab_size).items():
        path = root / name
        params = {"format": FORMAT, "family": family, "vocab_size": vocab, "seed": seed,
                  "corpus_sha256": digest, **shape}
        if not _is_built(path, params):
            if (family, vocab) not in tokenizers:
                tokenizers[family, vocab] = train_tokenizer(texts, vocab, CHAT_TEMPLATES[family],
                                                            family)
            _build(path, family, tokenizers[family, vocab], shape, params)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m raydistill.data.local_models OUT", file=sys.stderr)
        return 2
    for name, path in make_local_models(args[0]).items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
