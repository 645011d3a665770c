"""How a teacher's completion ends, the same on every engine (pure: no torch, no vLLM).

Both engines stop on the turn's stop tokens (EOS and the generation config's ids) and on the
configured stop strings. A completion is then what the teacher wrote *before* the stop: the
stop token is dropped (the student's response gets its own EOS appended), and a stop string is
cut at the token that completed it (that token and any after it are dropped), so `hf` and
`vllm` give the same ids for the same generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# the sampling settings of a greedy completion, for callers that set none (`sampling_of`'s keys)
GREEDY: dict[str, Any] = {"decoding": "greedy", "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                          "repetition_penalty": 1.0, "n": 1, "seed": 0, "stop": []}


@dataclass(frozen=True)
class Completion:
    """One completion: the ids kept, whether a stop (token or string) ended it, and per
    position (kept ids, then the stop position when finished) the engine's top-k log-probs
    where it returned them (vLLM, `logprobs=k`)."""

    ids: tuple[int, ...]
    finished: bool
    steps: tuple[Any, ...] | None = None

    @property
    def generated_tokens(self) -> int:
        """Tokens the teacher wrote, the stop token included."""
        return len(self.ids) + int(self.finished)


def cut_at_stop(ids: Sequence[int], decode: Callable[[Sequence[int]], str],
                stops: Sequence[str]) -> int | None:
    """Index of the token whose decoding first contains one of `stops`, or None.

    One decode when no stop string is there (the common case: the engine stopped at it, or
    never met one), else a bisection over prefixes (a prefix's text contains a stop string
    from the token that completes it on): O(log n) decodes, not one per token."""
    if not stops or not ids:
        return None

    def has_stop(n: int) -> bool:
        text = decode(ids[:n])
        return any(s in text for s in stops)

    if not has_stop(len(ids)):
        return None
    lo, hi = 1, len(ids)  # the shortest prefix with a stop string has length in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if has_stop(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def end_completion(ids: Sequence[int], stop_ids: Sequence[int], stops: Sequence[str],
                   decode: Callable[[Sequence[int]], str] | None,
                   steps: Sequence[Any] | None = None) -> Completion:
    """The completion in `ids` (an engine's raw output, possibly running past a stop)."""
    ids = [int(i) for i in ids]
    cut = next((j for j, t in enumerate(ids) if t in stop_ids), None)
    if stops and decode is not None:
        by_string = cut_at_stop(ids if cut is None else ids[:cut], decode, stops)
        cut = by_string if by_string is not None else cut
    kept = ids if cut is None else ids[:cut]
    finished = cut is not None
    kept_steps = None
    if steps is not None:
        kept_steps = tuple(steps[: len(kept) + int(finished)])
    return Completion(tuple(kept), finished, kept_steps)


def sampling_of(generation: Any, experiment_seed: int) -> dict:
    """Every decoding setting that determines a completion (the content address's part): both
    engines decode from exactly these (`teacher.stated_generation`, `teacher_vllm.
    sampling_params`), nothing from the checkpoint's generation_config.json but its stop ids
    (which the teacher's own address covers)."""
    g = generation
    seed = experiment_seed if g.seed is None else g.seed
    decoding = "greedy" if g.temperature == 0 else "sample"
    return {"decoding": decoding, "temperature": float(g.temperature), "top_p": float(g.top_p),
            "top_k": int(g.top_k), "repetition_penalty": float(g.repetition_penalty),
            "n": int(g.n), "seed": int(seed), "stop": list(g.stop),
            "max_new_tokens": int(g.max_new_tokens)}


def output_example_id(example_id: int, j: int, n: int) -> int:
    """The id of completion j of prompt `example_id` (n per prompt): unique, and equal to the
    prompt's id when n = 1."""
    return int(example_id) * n + j
