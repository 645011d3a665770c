"""On-policy distillation inside a Ray Train worker (`distill.method: onpolicy`, GKD's way).

Each step, with probability λ (`distill.lmbda`, drawn from one seeded stream on every rank so
that all ranks take the same branch, as a ZeRO-3 gather needs), the student generates
completions for the step's prompts on its own weights (under ZeRO-3 gathered once, as TRL's
`unwrap_model_for_generation`), in a "rollout" window of `student_training` nested in the
training window: its energy and the tokens it generated are kept apart from the update's.
Otherwise the step trains on the off-policy batch (the teacher's synthetic completions). Either
way the teacher pool (`teacher_scoring`) scores the sequences, and the student is updated with
the generalized JSD (`losses.onpolicy_jsd`, β) on the teacher's distribution at its positions.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from raydistill.distill.losses import NEG, TopK


def rollout_examples(student, examples: list[dict], tokenizer, cfg: dict,
                     synced: bool) -> tuple[list[dict], int]:
    """The step's prompts completed by the student (sampled at `cfg["temperature"]`, until its
    EOS or `max_new_tokens`, within `max_seq_len`): (examples, tokens generated). `synced`:
    every rank steps until all are done (HF's synced_gpus; ZeRO-3 with several ranks).

    One temperature (`distill.temperature`) for the rollouts and the loss, as TRL's GKD and
    DistillationTrainer do: the loss compares the distributions at T, so the student samples
    from the same distribution it is trained on."""
    from raydistill.distill.teacher import (
        left_padded,
        padded_rows,
        stated_generation,
        stop_ids_only,
    )

    prompts = [list(e["input_ids"][:e["prompt_len"]]) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id
    ids, attn = left_padded(prompts, pad)
    width = ids.shape[1]
    device = next(student.parameters()).device
    room = max(1, min(cfg["max_new_tokens"], cfg["max_seq_len"] - width))
    # every field that changes the samples stated, as the teacher's generation does: nothing
    # from the checkpoint's generation_config.json (a hub Instruct model's repetition penalty,
    # top-k, top-p), and never an output row past the tokenizer (a padded hub output layer)
    config = stated_generation({"decoding": "sample", "temperature": cfg["temperature"],
                                "top_p": 1.0, "top_k": 0}, room, pad,
                               [] if eos is None else [eos], padded_rows(student, tokenizer))
    was_training = student.training
    student.eval()
    with torch.no_grad(), stop_ids_only(student):
        out = student.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                               generation_config=config, synced_gpus=synced)
    if was_training:
        student.train()
    made, generated = [], 0
    for p, new in zip(prompts, out[:, width:].tolist(), strict=True):
        completion = _until_eos(new, eos)[:max(1, cfg["max_seq_len"] - len(p))]
        generated += len(completion)
        made.append({"input_ids": p + completion, "prompt_len": len(p)})
    return made, generated


def _until_eos(tokens: list[int], eos: int | None) -> list[int]:
    """A completion up to and including its first EOS (what follows is padding)."""
    if eos is not None and eos in tokens:
        return tokens[:tokens.index(eos) + 1]
    return tokens


def teacher_target(scored: list[dict], examples: list[dict], width: int,
                   device) -> torch.Tensor | TopK:
    """The scorer's answers placed at each example's response positions (prompt_len - 1
    onward) of a [B, width, ...] batch; other positions carry nothing (the mask drops them)."""
    first = scored[0]
    if "logits" in first:
        vocab = first["logits"].shape[-1]
        out = torch.zeros((len(examples), width, vocab))
        for i, (s, e) in enumerate(zip(scored, examples, strict=True)):
            start = e["prompt_len"] - 1
            out[i, start:start + len(s["logits"])] = torch.tensor(s["logits"])
        return out.to(device)
    k = first["logprobs"].shape[-1]
    lp = torch.full((len(examples), width, k), NEG)
    idx = torch.zeros((len(examples), width, k), dtype=torch.long)
    tail = torch.full((len(examples), width), NEG)
    for i, (s, e) in enumerate(zip(scored, examples, strict=True)):
        start, n = e["prompt_len"] - 1, len(s["logprobs"])
        lp[i, start:start + n] = torch.tensor(s["logprobs"])
        idx[i, start:start + n] = torch.tensor(s["indices"])
        tail[i, start:start + n] = torch.tensor(s["tail"])
    return TopK(lp.to(device), idx.to(device), tail.to(device))


# The teacher_scoring pool's limits: its load (a large teacher from disk, a vLLM engine) and
# one request (a batch across the workers: seconds on a GPU, longer on CPU)
SCORER_READY_TIMEOUT_S = 1800.0
SCORE_TIMEOUT_S = 900.0


def scorer_get(ref, timeout_s: float, what: str):
    """`ray.get(ref)` of a scoring actor within `timeout_s`, else one line on what to check."""
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        raise TimeoutError(
            f"teacher_scoring actor did not {what} within {timeout_s:.0f} s: its pool needs "
            f"generation.num_actors x generation.gpus_per_actor GPUs free beside the training "
            f"workers (see `raydistill plan`); add GPUs or lower generation.num_actors") from None


def replay_draws(lmbda: float, rng: random.Random, steps: int) -> int:
    """Draw the first `steps` steps' on/off-policy choices from `rng` (a resumed run continues
    the stream where its checkpoint left off): how many of them were rollout steps."""
    from raydistill.distill.onpolicy_loss import mix_onpolicy

    return sum(mix_onpolicy(lmbda, rng) for _ in range(steps))


class OnPolicy:
    """One worker's side of on-policy training: the λ draw, the rollouts and the loss."""

    def __init__(self, cfg: dict[str, Any], rank: int, world: int, start_step: int = 0) -> None:
        import ray

        from raydistill.distill.teacher_scoring import scorer_for, scorer_name

        self.cfg, self.rank, self.world = cfg, rank, world
        # the same stream on every rank: all of them roll out on the same steps
        self.rng = random.Random(cfg["seed"])
        # a resumed run draws where the checkpointed one left off, and counts the rollout steps
        # of the steps before it: `rollout_steps` is over the whole training, as the ledger is
        self.rollout_steps = replay_draws(cfg["lmbda"], self.rng, start_step)
        name = scorer_name(cfg["trial_id"], scorer_for(rank, cfg["scoring_actors"]))
        self.scorer = ray.get_actor(name, namespace=cfg["namespace"])
        # a pool that cannot be placed (too few GPUs beside the workers) would hang the first
        # request forever: wait for its load with a limit and say what to change
        scorer_get(self.scorer.ready.remote(), SCORER_READY_TIMEOUT_S, "load")
        self.rollout_tokens = 0

    def step_batches(self, batches: list[list[dict]], engine, tokenizer) -> list[list[dict]]:
        """The step's micro-batches: the student's own completions of their prompts (with
        probability λ, in a rollout window), else the off-policy batches as they are."""
        from raydistill.distill.onpolicy_loss import mix_onpolicy

        if not mix_onpolicy(self.cfg["lmbda"], self.rng):
            return batches
        from raydistill.cluster.devices import worker_devices
        from raydistill.cluster.windows import StageWindow
        from raydistill.distill.engine import dtype_of, full_parameters, resolve_precision
        from raydistill.energy.samples import ROLLOUT

        c = self.cfg
        zero_stage = c["zero_stage"] if c["engine"] == "deepspeed" else 0
        precision = resolve_precision(c["precision"])
        out = []
        with (StageWindow(c["namespace"], c["trial_id"], c["stage"], devices=worker_devices(),
                          phase=ROLLOUT) as window,
              full_parameters(engine, zero_stage) as module):
            student = module.student
            device = next(student.parameters()).device
            with torch.autocast(device.type, dtype=dtype_of(precision),
                                enabled=precision != "fp32"):
                for chosen in batches:
                    made, generated = rollout_examples(
                        student, chosen, tokenizer, c, synced=zero_stage == 3 and self.world > 1)
                    window.add_tokens(generated, generated=generated)
                    self.rollout_tokens += generated
                    out.append(made)
        self.rollout_steps += 1
        return out

    def objective(self, engine, chosen: list[dict], pad_id: int, device,
                  normaliser: float | None) -> torch.Tensor:
        """JSD_β between the student and the teacher pool's distribution over this
        micro-batch's response positions: their mean, or their sum ÷ `normaliser`."""
        from raydistill.distill.batches import pad_batch, response_tokens, to_device
        from raydistill.distill.onpolicy_loss import onpolicy_jsd

        c = self.cfg
        request = self.scorer.score.remote([list(e["input_ids"]) for e in chosen],
                                           [e["prompt_len"] for e in chosen])
        answers = scorer_get(request, SCORE_TIMEOUT_S, "answer a request")
        batch = to_device(pad_batch(chosen, pad_id), device)
        logits, _ = engine(batch["input_ids"], batch["attention_mask"], False)
        rows = c["vocab_rows"]
        if logits.shape[-1] > rows:
            logits = logits[..., :rows]
        target = teacher_target(answers, chosen, logits.shape[1], device)
        loss = onpolicy_jsd(logits, target, beta=c["beta"], temperature=c["temperature"],
                            mask=batch["mask"])
        if normaliser is not None:  # a mean over this micro-batch → its share of the step
            loss = loss * (response_tokens(chosen) / normaliser)
        return loss

    def figures(self) -> dict:
        return {"rollout_steps": self.rollout_steps, "rollout_tokens": self.rollout_tokens}
