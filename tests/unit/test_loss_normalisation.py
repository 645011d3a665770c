"""One optimizer step's loss is the mean over every response token of the global batch: split
into micro-batches of different response lengths (accumulated), it gives the same loss and the
same gradients as one batch holding them all (the bias transformers fixed in 4.46)."""

from __future__ import annotations

import pytest
import torch

from raydistill.distill.batches import response_tokens, step_normaliser
from raydistill.distill.losses import topk_from_logits
from raydistill.distill.models import build_projector
from raydistill.distill.tiny import build_tiny
from raydistill.distill.train import StudentModule, objective

V = 40
PROMPT, RESPONSES = 4, (11, 2, 3, 7)  # short and long responses, in different micro-batches


def examples(seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in RESPONSES:
        ids = torch.randint(2, V, (PROMPT + n,), generator=gen).tolist()
        e = {"input_ids": ids, "prompt_len": PROMPT, "teacher_input_ids": ids,
             "teacher_prompt_len": PROMPT}
        cache = topk_from_logits(torch.randn(n, V, generator=gen) * 3, 6)
        e.update(logprobs=cache.logprobs, indices=cache.indices, tail=cache.tail_logprob)
        out.append(e)
    return out


def cfg_of(method: str, top_k: int = 0) -> dict:
    return {"method": method, "loss": "forward_kl", "temperature": 1.0, "beta": 0.5,
            "alpha": 0.4, "top_k": top_k, "feature_kind": "mse", "chunk_tokens": 5,
            "vocab_rows": V}


def models(method: str):
    student = build_tiny({"hidden_size": 32, "num_attention_heads": 2}, V, seed=1)
    teacher = build_tiny({"hidden_size": 64, "num_attention_heads": 2}, V, seed=2).eval()
    projector = build_projector(student, teacher) if method == "feature" else None
    return StudentModule(student, projector), teacher


def step(cfg: dict, module, teacher, micro_batches: list[list[dict]], normalise: bool = True):
    """One step as student_loop takes it on the DDP path, world 1: (logged mean, grads)."""
    module.zero_grad(set_to_none=True)
    norm = step_normaliser(micro_batches, world=1) if normalise else None
    total = 0.0
    t = teacher if cfg["method"] != "logit" or cfg["top_k"] == 0 else None
    for chosen in micro_batches:
        loss = objective(cfg, module, t, chosen, 0, 0, "cpu", norm)
        (loss / len(micro_batches)).backward()  # train._backward's DDP division
        total += float(loss.detach()) * (norm if normalise else 1.0)
    mean = total / response_tokens([e for b in micro_batches for e in b]) if normalise else \
        total / len(micro_batches)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return mean, grads


@pytest.mark.parametrize(("method", "top_k"), [("sft", 0), ("logit", 6), ("logit", 0),
                                               ("feature", 0)])
def test_accumulated_micro_batches_equal_one_batch(method, top_k):
    cfg, ex = cfg_of(method, top_k), examples()
    module, teacher = models(method)
    one_loss, one = step(cfg, module, teacher, [ex])
    split_loss, split = step(cfg, module, teacher, [ex[:2], ex[2:]])
    assert split_loss == pytest.approx(one_loss, rel=1e-5)
    assert one.keys() == split.keys() and one
    for name in one:
        torch.testing.assert_close(split[name], one[name], atol=1e-6, rtol=1e-4, msg=name)
    # the per-micro-batch mean (the old objective) weighs the short responses' tokens more
    _, biased = step(cfg, module, teacher, [ex[:2], ex[2:]], normalise=False)
    assert any(not torch.allclose(biased[n], one[n], atol=1e-6, rtol=1e-4) for n in one)


def test_one_batch_normalised_loss_is_its_token_mean():
    cfg, ex = cfg_of("logit", 6), examples(1)
    module, _ = models("logit")
    mean = objective(cfg, module, None, ex, 0, 0, "cpu")
    summed = objective(cfg, module, None, ex, 0, 0, "cpu", step_normaliser([ex], world=1))
    torch.testing.assert_close(summed, mean)


def test_relational_term_is_weighted_by_the_micro_batchs_tokens():
    cfg, ex = cfg_of("relational"), examples(2)[:3] + examples(3)[:3]
    cfg["alpha"] = 0.0  # the relational term alone
    module, teacher = models("relational")
    a, b = ex[:3], ex[3:]
    norm = step_normaliser([a, b], world=1)
    per_batch = [objective(cfg, module, teacher, m, 0, 0, "cpu") for m in (a, b)]
    scaled = [objective(cfg, module, teacher, m, 0, 0, "cpu", norm) for m in (a, b)]
    total = response_tokens(a) + response_tokens(b)
    want = sum(r * response_tokens(m) for r, m in zip(per_batch, (a, b), strict=True)) / total
    torch.testing.assert_close(sum(scaled) / 2, want)


def test_normaliser_counts_every_rank_and_micro_batch():
    ex = examples()
    assert response_tokens(ex) == sum(RESPONSES)
    # world 1, two micro-batches: the loss is divided by N / 2, then by 2 by the loop
    assert step_normaliser([ex[:2], ex[2:]], world=1) == sum(RESPONSES) / 2
    assert step_normaliser([[{"input_ids": [1, 2], "prompt_len": 2}]], world=1) == 1.0


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One DDP rank over gloo: its two examples as two accumulated micro-batches."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        cfg, ex = cfg_of("logit", 6), examples()
        module, _ = models("logit")
        engine = DistributedDataParallel(module)
        mine = [[e] for e in ex[rank::world]]  # rank 0: the 11- and 3-token responses
        norm = step_normaliser(mine, world)
        for chosen in mine:
            (objective(cfg, engine, None, chosen, 0, 0, "cpu", norm) / len(mine)).backward()
        torch.save({n: p.grad for n, p in module.named_parameters() if p.grad is not None},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_ranks_with_accumulation_equal_one_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    module, _ = models("logit")
    _, one = step(cfg_of("logit", 6), module, None, [examples()])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == one.keys()
        for name in one:
            torch.testing.assert_close(got[name], one[name], atol=1e-6, rtol=1e-4, msg=name)
