"""The teacher as a scoring service for on-policy distillation (`distill.method: onpolicy`).

Each step the student's Ray Train workers send the token ids they trained on (their own
completions, or an off-policy batch) to a pool of teacher actors, which return the teacher's
distribution at every response position: the logits over the shared vocabulary rows, or the
top-k with the tail's log-mass (`distill.top_k` > 0). The pool lives on its own actors and GPUs
(placed as the teacher generation pool is, on any node), for the whole of the student's
training; requests from the workers that arrive together are run as one batch.

Measured as it happens, in the `teacher_scoring` stage on the actors' nodes: the model load is
a "load" window; from then (on CPU, from the first request) until the pool is closed an "idle"
window holds the actor's devices, and each batch runs in a "work" window nested in it (a
nested window takes its device-seconds, `energy.rows`). The teacher's GPUs are held while the
student generates and updates, so that waiting is paid for: it is shown as idle_j, not hidden
and not called work.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCORER_PREFIX = "teacher_scorer"

CLOSE_TIMEOUT_S = 120.0  # closing a pool actor: its windows close and its stats return


# A dense answer (top_k 0) is [positions, rows] float32 per sequence, shipped through Ray's
# object store on every request: at a Qwen vocabulary (152k rows) that is 0.6 MB a position,
# GBs a micro-batch. Above this, refuse and say to score the teacher's top-k with its tail.
DENSE_REQUEST_LIMIT_GIB = 1.0


def dense_request_gib(top_k: int, rows: int, sequences: int, positions: int) -> float:
    """GiB one scoring request returns when the target is dense (top_k 0), else 0."""
    return 0.0 if top_k > 0 else sequences * positions * rows * 4 / 2**30


def check_dense_request(top_k: int, rows: int, sequences: int, positions: int,
                        limit_gib: float = DENSE_REQUEST_LIMIT_GIB) -> None:
    """Refuse dense scoring whose answer per request exceeds `limit_gib` (one line: the fix)."""
    from raydistill.errors import ConfigError

    gib = dense_request_gib(top_k, rows, sequences, positions)
    if gib > limit_gib:
        raise ConfigError(
            f"distill.top_k 0 (dense on-policy scoring) ships {gib:.1f} GiB per request "
            f"({sequences} sequences x {positions} positions x {rows:,} vocab rows, float32), "
            f"above {limit_gib:g} GiB: set distill.top_k (e.g. 32; the tail mass is kept)")


def scorer_name(trial_id: str, index: int) -> str:
    return f"{SCORER_PREFIX}:{trial_id}:{index}"


def scorer_for(rank: int, num_actors: int) -> int:
    """Which actor of the pool a worker of this rank sends to."""
    return rank % num_actors


def expected_per_actor(world: int, num_actors: int) -> list[int]:
    """How many workers send to each actor each step (its batch is complete at that many)."""
    counts = [0] * num_actors
    for rank in range(world):
        counts[scorer_for(rank, num_actors)] += 1
    return counts


@dataclass
class _Request:
    sequences: list[list[int]]
    starts: list[int]
    done: threading.Event = field(default_factory=threading.Event)
    taken: bool = False
    result: list[dict] | None = None
    error: BaseException | None = None


def response_targets(logits, sequences: list[list[int]], starts: list[int], top_k: int,
                     temperature: float) -> list[dict[str, np.ndarray]]:
    """Per sequence, the teacher at the positions that predict its response (start - 1 ...
    len - 2): {"logits": [n, V]} or, with `top_k`, {"logprobs", "indices", "tail"} [n, k]."""
    from raydistill.distill.losses import topk_from_logits

    out = []
    for i, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
        rows = logits[i, start - 1:len(seq) - 1].float()
        if top_k:
            t = topk_from_logits(rows, top_k, temperature)
            out.append({"logprobs": t.logprobs.numpy(), "indices": t.indices.numpy(),
                        "tail": t.tail_logprob.numpy()})
        else:
            out.append({"logits": rows.numpy()})
    return out


def vllm_targets(prompt_logprobs: list[list], sequences: list[list[int]], starts: list[int],
                 top_k: int, rows: int) -> list[dict[str, np.ndarray]]:
    """`response_targets` from vLLM's `prompt_logprobs` (entry i: the teacher's top-k for
    token i given those before it, raw log-softmax at T = 1): the response's positions are
    start ... len - 1; ids past the tokenizer's `rows` are dropped into the tail
    (`teacher_vllm.real_rows`)."""
    from raydistill.distill.sparse_topk import topk_arrays
    from raydistill.distill.teacher_vllm import real_rows

    out = []
    for steps, seq, start in zip(prompt_logprobs, sequences, starts, strict=True):
        kept = [real_rows(st, rows, top_k) for st in list(steps)[start:len(seq)]]
        values, indices, tail = topk_arrays(kept, top_k)
        out.append({"logprobs": values, "indices": indices.astype(np.int64), "tail": tail})
    return out


def scoring_engine(engine: str, top_k: int, temperature: float) -> str:
    """vllm (prompt_logprobs) where the run's teacher engine is vLLM and the target is a top-k
    at T = 1 (vLLM's raw logprobs are log_softmax at T = 1); hf (a forward) otherwise."""
    return "vllm" if engine == "vllm" and top_k > 0 and temperature == 1.0 else "hf"


class TeacherScorer:
    """One actor of the pool (`engine` hf: a forward; vllm: prompt_logprobs). `expected`: the
    workers sending to it each step; a batch runs when all of them have sent, or `wait_s`
    after the first one did."""

    def __init__(self, model_path: str, namespace: str, trial_id: str, *, rows: int,
                 top_k: int, temperature: float, expected: int, wait_s: float = 2.0,
                 threads: int = 1, engine: str = "hf", vllm: dict | None = None) -> None:
        import torch

        from raydistill.cluster.devices import worker_devices
        from raydistill.cluster.windows import StageWindow
        from raydistill.energy.samples import LOAD

        torch.set_num_threads(max(1, threads))
        self.namespace, self.trial_id = namespace, trial_id
        self.rows, self.top_k, self.temperature = rows, top_k, temperature
        self.expected, self.wait_s = max(1, expected), wait_s
        self.engine = engine
        self.devices = worker_devices()
        with StageWindow(namespace, trial_id, "teacher_scoring", devices=self.devices,
                         phase=LOAD, parent_id=None):
            self._load(model_path, threads, vllm or {})
        self.idle: StageWindow | None = None
        self._opened_s = time.monotonic()
        if self.devices:  # held from here until close(): its GPUs wait for the next request
            self._open_idle()
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._forward = threading.Lock()
        self.stats: dict[str, Any] = {"requests": 0, "batches": 0, "sequences": 0,
                                      "tokens": 0, "busy_s": 0.0}

    def _load(self, model_path: str, threads: int, vllm: dict) -> None:
        if self.engine == "vllm":
            from raydistill.distill.teacher_vllm import make_llm, warm_up

            self.llm = make_llm(model_path, gpus=vllm.get("gpus", 1),
                                max_model_len=vllm.get("max_model_len", 2048),
                                top_k=self.top_k, seed=0,
                                memory_fraction=vllm.get("memory_fraction", 0.0),
                                tokenizer=False, threads=threads)
            warm_up(self.llm, self.top_k)
            return
        from raydistill.distill.teacher import load_model_and_tokenizer

        self.model, tokenizer = load_model_and_tokenizer(model_path)
        self.model.eval()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = self.model.get_input_embeddings().weight.device

    def _open_idle(self) -> None:
        """The idle window, open until close(). An actor holding GPUs opens it once loaded;
        one holding none (CPU) at its first request: before that the node's shared CPU is the
        student's start-up, which an idle window would otherwise take a share of."""
        from raydistill.cluster.windows import StageWindow
        from raydistill.energy.samples import IDLE

        self.idle = StageWindow(self.namespace, self.trial_id, "teacher_scoring",
                                devices=self.devices, phase=IDLE, parent_id=None)
        self.idle.__enter__()
        self._opened_s = time.monotonic()

    def ready(self) -> bool:
        return True

    def score(self, sequences: list[list[int]], starts: list[int]) -> list[dict]:
        """The teacher's distribution at each sequence's response positions (see
        `response_targets`); blocks until the batch this request joined has run."""
        if len(sequences) != len(starts):
            raise ValueError(f"score: {len(sequences)} sequences but {len(starts)} starts")
        req = _Request(sequences, starts)
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
            deadline = time.monotonic() + self.wait_s
            while not req.taken and len(self._pending) < self.expected:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [] if req.taken else self._take()
        if batch:
            self._run(batch)
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result or []

    def _take(self) -> list[_Request]:
        batch, self._pending = self._pending, []
        for r in batch:
            r.taken = True
        self._cond.notify_all()
        return batch

    def _run(self, batch: list[_Request]) -> None:
        from raydistill.cluster.windows import StageWindow, cpu_time_s
        from raydistill.energy.samples import WORK

        seqs = [s for r in batch for s in r.sequences]
        starts = [s for r in batch for s in r.starts]
        try:
            with self._forward:
                if self.idle is None:
                    self._open_idle()
                t0, cpu0 = time.monotonic(), cpu_time_s()
                with StageWindow(self.namespace, self.trial_id, "teacher_scoring",
                                 devices=self.devices, phase=WORK,
                                 parent_id=self.idle.window.window_id) as window:
                    results = self._forward_pass(seqs, starts)
                    window.add_tokens(sum(len(s) for s in seqs))
                # the idle window's CPU time is the process's: take the batch's out of it, so
                # a CPU-share split charges the idle stretch for what it used, not the work
                self.idle._cpu0 += cpu_time_s() - cpu0
                self.stats["busy_s"] += time.monotonic() - t0
            self.stats["requests"] += len(batch)
            self.stats["batches"] += 1
            self.stats["sequences"] += len(seqs)
            self.stats["tokens"] += sum(len(s) for s in seqs)
            i = 0
            for r in batch:
                r.result = results[i:i + len(r.sequences)]
                i += len(r.sequences)
        except BaseException as e:  # every waiting worker hears of it, not only this one
            for r in batch:
                r.error = e
        finally:
            for r in batch:
                r.done.set()

    def _forward_pass(self, seqs: list[list[int]], starts: list[int]) -> list[dict]:
        import torch

        if self.engine == "vllm":
            from vllm import SamplingParams

            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=self.top_k,
                                    detokenize=False)
            outs = self.llm.generate([{"prompt_token_ids": q} for q in seqs], params,
                                     use_tqdm=False)
            return vllm_targets([o.prompt_logprobs for o in outs], seqs, starts, self.top_k,
                                self.rows)

        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.as_tensor(s)
            attn[i, :len(s)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=attn.to(self.device)).logits
        return response_targets(logits[..., :self.rows].cpu(), seqs, starts, self.top_k,
                                self.temperature)

    def close(self) -> dict:
        """Close the idle window; the pool's figures: busy and idle seconds, batches, tokens."""
        if self.idle is not None:
            self.idle.close()
        held_s = time.monotonic() - self._opened_s
        return {**self.stats, "held_s": held_s,
                "idle_s": max(0.0, held_s - self.stats["busy_s"])}


def start_pool(model_path: str, namespace: str, trial_id: str, *, num_actors: int, world: int,
               use_gpu: bool, gpus_per_actor: int, rows: int, top_k: int,
               temperature: float, engine: str = "hf", vllm: dict | None = None) -> list:
    """The pool's actors, named (`scorer_name`) so that the training workers find them; they
    load while the workers start (a worker's first request waits for its actor). On GPUs each
    holds `gpus_per_actor`; on CPU none is reserved (the workers wait while it scores, so it
    runs in their idle time instead of a core's).

    Never detached: the actors are owned by the process that starts them (a Tune trial's
    actor), so when a scheduler stops the trial by killing that actor (Tune's reuse_actors is
    off) and `close_pool` never runs, Ray ends them with it and the node's sampler closes
    their open windows (closed_by process_gone; tests/integration/test_scoring_pool_owner.py)."""
    import ray

    res: dict[str, Any] = {"num_gpus": gpus_per_actor} if use_gpu else {"num_cpus": 0}
    counts = expected_per_actor(world, num_actors)
    actor = ray.remote(TeacherScorer)
    handles = [actor.options(
        # named in the run's namespace, where the workers look it up: a driver that joined a
        # Ray already up (a notebook's, a test session's) is in that Ray's namespace instead
        name=scorer_name(trial_id, i), namespace=namespace, max_concurrency=counts[i] + 2,
        # inside a Tune trial an actor would otherwise join the trial's tiny placement group
        scheduling_strategy="DEFAULT", **res).remote(
            model_path, namespace, trial_id, rows=rows, top_k=top_k, temperature=temperature,
            expected=counts[i], engine=engine, vllm=vllm) for i in range(num_actors)]
    return handles


def close_pool(handles: list) -> dict:
    """Close every actor's idle window and end the actors; their figures summed."""
    import contextlib

    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    stats = []
    for h in handles:
        # one that died (its error is the training's) has nothing left to close; one never
        # placed (no free GPU) would never answer: a bounded wait, so the error that stopped
        # the training reaches the user instead of a hang here
        with contextlib.suppress(RayActorError, GetTimeoutError):
            stats.append(ray.get(h.close.remote(), timeout=CLOSE_TIMEOUT_S))
        ray.kill(h)
    if not stats:
        return {"scoring_actors": len(handles)}
    keys = ("requests", "batches", "sequences", "tokens", "busy_s", "idle_s", "held_s")
    return {f"scoring_{k}": sum(s[k] for s in stats) for k in keys} | {
        "scoring_actors": len(handles)}
