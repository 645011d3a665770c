"""Examples → padded tensors, with the teacher's side aligned to the student's positions.

The student's position t predicts token t+1; the loss reads the positions that predict the
response (prompt_len - 1 ... len - 2). The teacher's targets (a cached top-k over the response,
or an online teacher's logits and hidden states over its own sequence) are moved onto those
same positions, so every loss compares like with like whatever the two chat templates are.
"""

from __future__ import annotations

import torch

from raydistill.distill.losses import NEG, TopK


def pad_batch(examples: list[dict], pad_id: int, ids_key: str = "input_ids",
              prompt_key: str = "prompt_len") -> dict[str, torch.Tensor]:
    """Right-pad ids; `mask[i, t]` says position t predicts a response token of example i;
    `targets[i, t]` is that token (the next one)."""
    n = max(len(e[ids_key]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), n), dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.bool)
    for i, e in enumerate(examples):
        L = len(e[ids_key])
        ids[i, :L] = torch.as_tensor(e[ids_key])
        attn[i, :L] = 1
        mask[i, e[prompt_key] - 1 : L - 1] = True
    targets = torch.cat([ids[:, 1:], torch.full((len(examples), 1), pad_id)], dim=1)
    return {"input_ids": ids, "attention_mask": attn, "mask": mask, "targets": targets}


def cached_topk(examples: list[dict], width: int) -> TopK:
    """The cached top-k of each example placed at its response positions (prompt_len - 1
    onward) in a [B, width, k] batch; other positions carry no mass (they are masked)."""
    k = examples[0]["logprobs"].shape[-1]
    lp = torch.full((len(examples), width, k), NEG)
    idx = torch.zeros((len(examples), width, k), dtype=torch.long)
    tail = torch.full((len(examples), width), NEG)
    for i, e in enumerate(examples):
        start, n = e["prompt_len"] - 1, e["logprobs"].shape[0]
        lp[i, start:start + n] = e["logprobs"]
        idx[i, start:start + n] = e["indices"]
        tail[i, start:start + n] = e["tail"]
    return TopK(logprobs=lp, indices=idx, tail_logprob=tail)


def teacher_index(examples: list[dict], width: int) -> torch.Tensor | None:
    """[B, width] teacher position for each student position over the response (0 elsewhere),
    or None when the two sequences put every response at the same positions."""
    if all(e["teacher_prompt_len"] == e["prompt_len"] for e in examples):
        return None
    index = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"]) - e["prompt_len"]
        s, t = e["prompt_len"] - 1, e["teacher_prompt_len"] - 1
        index[i, s:s + n] = torch.arange(t, t + n)
    return index


def align(teacher: torch.Tensor, index: torch.Tensor | None, width: int) -> torch.Tensor:
    """Teacher tensor [B, Tt, X] at the student's positions: [B, width, X]."""
    if index is None:
        if teacher.shape[1] >= width:
            return teacher[:, :width]
        pad = teacher.new_zeros((teacher.shape[0], width - teacher.shape[1], teacher.shape[2]))
        return torch.cat([teacher, pad], dim=1)
    index = index.to(teacher.device)
    return teacher.gather(1, index[..., None].expand(-1, -1, teacher.shape[-1]))


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def response_tokens(examples: list[dict]) -> int:
    """How many positions of these examples the loss reads (`pad_batch`'s mask): each response
    token, its EOS included."""
    return sum(len(e["input_ids"]) - e["prompt_len"] for e in examples)


def step_normaliser(micro_batches: list[list[dict]], world: int, device=None) -> float:
    """What each micro-batch's summed token loss is divided by so that one optimizer step's
    gradient is that of the mean over every response token of the global batch.

    Global count N: this rank's tokens over its micro-batches of the step, summed over the
    ranks with one all-reduce of one number (none when world is 1). The engines then average:
    DDP and DeepSpeed divide the summed gradients by `world`, and the loop divides each
    micro-batch's loss by the accumulation steps (DeepSpeed's `backward` does it itself). So
    the loss handed to them is sum / (N / (world · accum)): after both divisions each token
    weighs 1/N, however the tokens fell into micro-batches and ranks. (The transformers ≥ 4.46
    fix: a mean per micro-batch, averaged again, gives tokens of short responses more weight.)
    """
    local = sum(response_tokens(b) for b in micro_batches)
    total = local
    if world > 1:
        import torch.distributed as dist

        count = torch.tensor([float(local)], dtype=torch.float64, device=device)
        dist.all_reduce(count)  # SUM
        total = int(count.item())
    return max(total, 1) / (world * len(micro_batches))
