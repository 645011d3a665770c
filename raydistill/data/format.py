"""Chat templates and tokenisation, one way for every stage.

Generation, logit caching, training and evaluation all build a model's input the same way:

    prompt   = the tokenizer's own chat template over the conversation, with the generation
               prompt (`apply_chat_template(..., add_generation_prompt=True)`), tokenized with
               `add_special_tokens=False` (the template already holds BOS where the model wants
               one); a tokenizer without a template gets the turns' text, BOS first if it has one
    response = the answer's tokens, then the model's EOS when the answer is complete (a gold
               response, or a teacher completion that stopped on EOS; not one cut at the limit)

The loss covers the response tokens and that EOS only. Teacher and student each use their own
template; the response tokens are shared between them when their vocabularies are one, which
logit KD requires (`check_vocabulary`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydistill.errors import ConfigError


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The text a model reads before it answers `messages`."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else ""
    return bos + "\n".join(m["content"] for m in messages)


def prompt_ids(tokenizer: Any, messages: list[dict], max_tokens: int) -> list[int]:
    """Token ids of the rendered prompt; a longer one keeps its last tokens (and its BOS)."""
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return list(ids)
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos:
        return [bos, *ids[len(ids) - max_tokens + 1:]]
    return list(ids[len(ids) - max_tokens:])


def response_ids(tokenizer: Any, text: str, max_tokens: int, finished: bool = True) -> list[int]:
    """The answer's ids, with EOS when the answer is complete and fits."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) >= max_tokens:
        return ids[:max_tokens]
    return [*ids, tokenizer.eos_token_id] if finished else ids


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt then response; the loss reads positions
    prompt_len - 1 ... len - 2 (each predicting the next token, the response's)."""

    input_ids: list[int]
    prompt_len: int

    @property
    def response_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


def encode(tokenizer: Any, messages: list[dict], response: list[int], *, max_prompt_tokens: int,
           max_seq_len: int) -> Example:
    """Prompt (this tokenizer's template) + given response ids, within max_seq_len: the
    prompt gives way first (its last tokens kept), the response only if it alone is longer."""
    response = response[: max_seq_len - 1]
    room = max(1, min(max_prompt_tokens, max_seq_len - len(response)))
    prompt = prompt_ids(tokenizer, messages, room)
    return Example([*prompt, *response], len(prompt))


def stop_ids(tokenizer: Any, model_dir: str | Path | None = None) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS and the generation config's EOS ids
    (Llama 3 and Qwen2.5 Instruct list several; generating past them writes a second turn)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen = generation_config_file(model_dir) if model_dir else None
    if gen is not None:
        eos = json.loads(gen.read_text()).get("eos_token_id")
        for i in eos if isinstance(eos, list) else [eos]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    if not ids:
        raise ConfigError(f"tokenizer of {model_dir or 'the model'} has no EOS token: set "
                          "eos_token in its tokenizer_config.json")
    return ids


def generation_config_file(model: str | Path) -> Path | None:
    """The model's generation_config.json: in its directory, or (a hub id, as a teacher used
    where it is names itself) in the hub cache, downloaded when the hub is reachable. None
    when the model has none: its tokenizer's EOS is then the only stop."""
    local = Path(model).expanduser()
    if local.is_dir():
        path = local / "generation_config.json"
        return path if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(model), "generation_config.json"))
    except Exception as exc:  # offline and not cached, no such file, not a hub id
        import logging

        # said, not silent: Llama-3.1-Instruct's file adds <|end_of_text|> and <|eom_id|>
        logging.getLogger(__name__).warning(
            "%s: no generation_config.json readable (%s); its tokenizer's EOS is the only "
            "stop id", model, type(exc).__name__)
        return None


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers give every token the same id."""
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def check_vocabulary(teacher_tok: Any, student_tok: Any, teacher_name: str, student_name: str,
                     why: str) -> None:
    """Refuse a teacher and student whose token ids mean different things (`why` needs one)."""
    if same_vocabulary(teacher_tok, student_tok):
        return
    raise ConfigError(f"{why} needs one vocabulary, but the teacher's tokenizer ({teacher_name}, "
                      f"{len(teacher_tok):,} tokens) and the student's ({student_name}, "
                      f"{len(student_tok):,} tokens) differ; use distill.method sft, or a "
                      "student of the teacher's family")


def shared_rows(tokenizer: Any, output_rows: dict[str, int]) -> int:
    """The output rows every loss reads: the shared tokenizer's length. Hub checkpoints pad their
    output layer past it (Qwen2.5-7B has 152,064 rows, 0.5B 151,936, for 151,665 tokens): rows
    no token id reaches, cut from both sides. `output_rows` maps each model's name to its
    config's vocab_size; a model with fewer rows than the tokenizer has tokens cannot be used."""
    tokens = len(tokenizer)
    for name, rows in output_rows.items():
        if rows < tokens:
            raise ConfigError(f"{name} has {rows:,} output rows but its tokenizer has "
                              f"{tokens:,} tokens: its config.json vocab_size must be at least "
                              "the tokenizer's length (a tokenizer from another checkpoint?)")
    return tokens


def answer_of(text: str, pattern: str = "") -> str | None:
    """What exact match compares: group 1 (or the whole match) of `pattern`, else the stripped
    text; commas in numbers and surrounding whitespace do not count. None when `pattern` is set
    and the text holds no match: there is no answer to compare (never "", which would equal
    another missing answer)."""
    import re

    text = text.strip()
    if pattern:
        m = re.search(pattern, text)
        if m is None:
            return None
        text = (m.group(1) if m.groups() else m.group(0)) or ""
    return _normalised(text)


def gold_answer(text: str, pattern: str = "") -> tuple[str, bool]:
    """(the answer a gold response gives, whether the pattern extracted it). A gold the pattern
    cannot read (a data set without "#### " lines) is compared as its whole stripped text, so a
    model's extracted answer can still match it, and an unreadable output never does."""
    answer = answer_of(text, pattern)
    return (answer, True) if answer is not None else (_normalised(text.strip()), False)


def _normalised(text: str) -> str:
    import re

    text = text.strip()
    return text.replace(",", "") if re.fullmatch(r"[-\d.,]+", text) else text


@dataclass(frozen=True)
class AnswerScore:
    """Exact match of outputs against golds: `correct` of `rows`; `extract_failures` outputs
    the pattern could not read (each scored wrong); `gold_unextracted` golds compared whole."""

    correct: int
    rows: int
    extract_failures: int
    gold_unextracted: int

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.rows)

    @property
    def extract_fail_rate(self) -> float:
        return self.extract_failures / max(1, self.rows)


def score_answers(outputs: list[str], golds: list[str], pattern: str = "") -> AnswerScore:
    """Exact match, row by row: an output the pattern cannot read is wrong and counted."""
    if len(outputs) != len(golds):
        raise ValueError(f"{len(outputs)} outputs for {len(golds)} gold responses")
    correct = failures = unread_golds = 0
    for output, gold in zip(outputs, golds, strict=True):
        answer = answer_of(output, pattern)
        expected, extracted = gold_answer(gold, pattern)
        failures += answer is None
        unread_golds += not extracted
        correct += answer is not None and answer == expected
    return AnswerScore(correct, len(outputs), failures, unread_golds)
