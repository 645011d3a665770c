"""On-policy distillation with TRL's DistillationTrainer, the teacher served elsewhere, measured.

    python examples/trl_onpolicy.py --out runs/trl-onpolicy    # the tiny local Qwen2 pair, offline
    python examples/trl_onpolicy.py --teacher Qwen/Qwen2.5-1.5B-Instruct \
        --student Qwen/Qwen2.5-0.5B-Instruct --teacher-gpus 1 --out runs/onpolicy
    raydistill report runs/trl-onpolicy

The student generates its own completions every step and a teacher scores them. Here the teacher
is a scoring service of its own (a Ray actor standing in for a server on other GPUs, even other
nodes) that returns its top-k log-probabilities with the tail mass, and the student updates on
`raydistill.distill.onpolicy_loss.onpolicy_jsd` (TRL's generalized JSD, equal to TRL's own loss:
tests/unit/test_onpolicy_loss.py). What raydistill adds (lines marked `# raydistill`):

- `EnergyCallback.attach`: student_training, with the trainer's generation as its "rollout"
  phase (the results table's rollout_j, rollout_tokens, rollout_j_per_token apart from the
  update's work_j);
- the teacher's process opens a `teacher_scoring` stage where it runs, for as long as it holds
  its devices, as raydistill's own scoring pool does: loading is its "load" phase, then an
  "idle" window stays open until the server is closed (the GPUs are held for the trial, so
  the time between requests is paid for and shown as idle_j), and each request is a "work"
  window nested in it (busy: work_j). The server is closed in a `finally`, so a training that
  raises still ends its windows. A teacher behind a server you do not control is
  measured the same way from its host: `raydistill measure --stage teacher_scoring --run DIR`
  around the server process, or `raydistill.stage("teacher_scoring")` inside it.

On-policy teacher work is not reusable: the run has no N* (results.py), and the report compares
the energy to reach a dev quality instead (report/policy_rules.py).

Data: JSONL rows {"messages": [{"role": "user", ...}], "response": "..."} (the default file is
raydistill's shipped chat tasks); only the prompts are used.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import ray
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DistillationConfig, DistillationTrainer

import raydistill  # raydistill
from raydistill.distill.losses import TopK, topk_from_logits
from raydistill.distill.onpolicy_loss import onpolicy_jsd
from raydistill.integrations.hf import EnergyCallback  # raydistill


@ray.remote
class TeacherServer:
    """The teacher as a scoring service: top-k log-probs (with the tail) of each completion
    position; its process is in `teacher_scoring` windows for as long as it lives: load, then
    idle until `close`, with each request a work window inside the idle one."""

    def __init__(self, path: str, run, trial: str) -> None:
        self.run, self.trial = run, trial
        with run.stage("teacher_scoring", trial=trial, phase="load"):  # raydistill
            self.model = AutoModelForCausalLM.from_pretrained(path).eval()
            if torch.cuda.is_available():
                self.model.cuda()
        # raydistill: held from here until close(); requests nest in it as work. A GPU is held
        # from its load on; a CPU actor holds no device of its own, so its idle window opens at
        # the first request (it would otherwise take the node's CPU while the student starts)
        self.idle = None
        if torch.cuda.is_available():
            self._hold()

    def _hold(self) -> None:
        self.idle = self.run.stage("teacher_scoring", trial=self.trial, phase="idle")
        self.idle.__enter__()

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def score(self, input_ids, attention_mask, completion_len: int, k: int, temperature: float):
        if self.idle is None:
            self._hold()
        # raydistill: a busy window inside the idle one (the ledger charges the idle window the
        # rest of the time only)
        with self.run.stage("teacher_scoring", trial=self.trial) as busy:
            device = self.model.device
            logits = self.model(input_ids=input_ids.to(device),
                                attention_mask=attention_mask.to(device)).logits
            cache = topk_from_logits(logits[:, -completion_len - 1:-1], k, temperature)
            busy.add_tokens(int(attention_mask.sum()))  # raydistill: tokens it read
        return cache.logprobs.cpu(), cache.indices.cpu(), cache.tail_logprob.cpu()

    def close(self) -> None:
        if self.idle is not None:
            self.idle.__exit__(None, None, None)  # raydistill: the devices are given back


class RemoteTeacherDistillationTrainer(DistillationTrainer):
    """TRL's on-policy trainer with the teacher behind `TeacherServer` instead of in-process."""

    def __init__(self, *args, teacher_server, top_k: int, **kwargs) -> None:
        super().__init__(*args, teacher_model=None, **kwargs)
        self.teacher_server, self.top_k = teacher_server, top_k

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        n = mask.shape[1]
        logits = unwrapped_student(input_ids=ids, attention_mask=attention).logits[:, -n - 1:-1]
        scored = ray.get(self.teacher_server.score.remote(ids.cpu(), attention.cpu(), n,
                                                          self.top_k, self.temperature))
        teacher = TopK(*(t.to(logits.device) for t in scored))
        loss = onpolicy_jsd(logits, teacher, beta=self.beta, temperature=self.temperature,
                            mask=mask)
        with torch.no_grad():  # TRL logs the student's entropy per completion token
            logp = torch.log_softmax(logits.float(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
        return loss, (entropy * mask).sum(), mask.sum()


def prompts(path: Path, n: int) -> list[list[dict]]:
    with path.open() as fh:
        return [json.loads(line)["messages"] for _, line in zip(range(n), fh, strict=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help="teacher model (hub id or directory)")
    p.add_argument("--student", default=None, help="student model (hub id or directory)")
    p.add_argument("--data", default=None, help="chat JSONL (default: the shipped tasks)")
    p.add_argument("--out", default="runs/trl-onpolicy", help="the run directory")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--beta", type=float, default=1.0, help="0 forward KL ... 1 reverse KL")
    p.add_argument("--top-k", type=int, default=16, help="teacher log-probs per position")
    p.add_argument("--teacher-gpus", type=float, default=0, help="GPUs the teacher holds")
    a = p.parse_args()
    if a.teacher is None or a.student is None:  # the tiny offline pair raydistill builds
        from raydistill.data.local_models import make_local_models

        local = make_local_models(Path(a.out).parent / "local-models")
        a.teacher, a.student = str(local["qwen2-teacher"]), str(local["qwen2-student"])
    if a.data is None:
        from raydistill.data.chat_tasks import example_path

        a.data = str(example_path())
    tok = AutoTokenizer.from_pretrained(a.student)
    tok.padding_side = "left"  # the trainer generates from left-padded prompts
    tok.pad_token = tok.pad_token or tok.eos_token
    data = Dataset.from_dict({"prompt": prompts(Path(a.data), a.rows)})
    args = DistillationConfig(output_dir=tempfile.mkdtemp(prefix="trl-onpolicy-"),
                              max_steps=a.steps, per_device_train_batch_size=4,
                              max_completion_length=16, beta=a.beta, learning_rate=5e-4,
                              logging_steps=2, report_to=[], save_strategy="no",
                              use_cpu=not torch.cuda.is_available())

    with raydistill.track(out=a.out, trial="onpolicy") as run:  # raydistill
        server = TeacherServer.options(num_gpus=a.teacher_gpus).remote(a.teacher, run,
                                                                        "onpolicy")
        try:
            ray.get(server.ready.remote())  # loaded before the first step: no wait in training
            trainer = RemoteTeacherDistillationTrainer(
                model=AutoModelForCausalLM.from_pretrained(a.student), args=args,
                train_dataset=data, processing_class=tok, teacher_server=server, top_k=a.top_k)
            EnergyCallback.attach(trainer, run)  # raydistill
            trainer.train()
        finally:  # raydistill: the teacher's idle window ends, whether training ended or raised
            ray.get(server.close.remote())
    print(f"run written to {a.out}: raydistill report {a.out}")


if __name__ == "__main__":
    main()
