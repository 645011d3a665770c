"""Distil a teacher into a student with TRL's GKDTrainer, every stage measured by raydistill.

    python examples/trl_gkd.py --out runs/trl-gkd            # the tiny local Qwen2 pair, offline
    python examples/trl_gkd.py --teacher Qwen/Qwen2.5-1.5B-Instruct \
        --student Qwen/Qwen2.5-0.5B-Instruct --data my_chats.jsonl --out runs/gkd --baseline
    raydistill report runs/gkd

A plain TRL script plus three raydistill lines (marked `# raydistill`): `track` around the work,
`EnergyCallback.attach` on each trainer, and the scores. The teacher's sequence-level data
(teacher_generation) and the evaluation are stages of their own; GKD's online teacher forward
passes happen inside training steps, so they are part of student_training's figure. With
`--baseline`, the same student is fine-tuned on the same prompts' references without the
teacher (SFT), so the report can say whether the teacher's bill paid for itself (N*).

Data: JSONL rows {"messages": [{"role": "user", ...}], "response": "..."} (the default file is
raydistill's shipped chat tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from trl.experimental.gkd import GKDConfig, GKDTrainer

import raydistill  # raydistill
from raydistill.integrations.hf import EnergyCallback  # raydistill


def rows(path: Path, n: int) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


def chat(row: dict, response: str) -> dict:
    return {"messages": [*row["messages"], {"role": "assistant", "content": response}]}


@torch.no_grad()
def teacher_responses(teacher, tok, prompts: list[dict], max_new_tokens: int, stage) -> list[str]:
    """Greedy responses of the teacher to each prompt (sequence-level KD data)."""
    out = []
    for row in prompts:
        ids = tok.apply_chat_template(row["messages"], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        gen = teacher.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        new = gen[0, ids["input_ids"].shape[1]:]
        stage.add_tokens(int(gen.shape[1]), generated=int(new.shape[0]))
        out.append(tok.decode(new, skip_special_tokens=True))
    return out


@torch.no_grad()
def token_accuracy(model, tok, held_out: list[dict], stage) -> float:
    """Share of reference response tokens the model predicts (greedy, teacher-forced)."""
    hits = total = 0
    for row in held_out:
        prompt = tok.apply_chat_template(row["messages"], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
        answer = tok(row["response"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        pred = model(ids).logits[0, len(prompt) - 1:-1].argmax(-1)
        hits += int((pred == torch.tensor(answer)).sum())
        total += len(answer)
        stage.add_tokens(int(ids.shape[1]))
    return hits / max(total, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help="teacher model (hub id or directory)")
    p.add_argument("--student", default=None, help="student model (hub id or directory)")
    p.add_argument("--data", default=None, help="chat JSONL (default: the shipped tasks)")
    p.add_argument("--out", default="runs/trl-gkd", help="the run directory")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--baseline", action="store_true", help="also fine-tune without the teacher")
    a = p.parse_args()
    if a.teacher is None or a.student is None:  # the tiny offline pair raydistill builds
        from raydistill.data.local_models import make_local_models

        local = make_local_models(Path(a.out).parent / "local-models")
        a.teacher, a.student = str(local["qwen2-teacher"]), str(local["qwen2-student"])
    if a.data is None:
        from raydistill.data.chat_tasks import example_path

        a.data = str(example_path())
    data = rows(Path(a.data), a.rows + 8)
    train_rows, held_out = data[:a.rows], data[a.rows:]
    tok = AutoTokenizer.from_pretrained(a.student)
    work = tempfile.mkdtemp(prefix="trl-gkd-")
    common = {"max_steps": a.steps, "per_device_train_batch_size": 4, "logging_steps": 2,
              "report_to": [], "use_cpu": not torch.cuda.is_available(), "save_strategy": "no",
              "learning_rate": 5e-4}

    with raydistill.track(out=a.out, trial="gkd") as run:  # raydistill
        teacher = AutoModelForCausalLM.from_pretrained(a.teacher)
        with run.stage("teacher_generation") as s:  # raydistill (a stage of its own)
            responses = teacher_responses(teacher, tok, train_rows, 24, s)
        kd_data = Dataset.from_list([chat(r, t) for r, t in zip(train_rows, responses,
                                                                  strict=True)])
        trainer = GKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(a.student), teacher_model=teacher,
            args=GKDConfig(output_dir=f"{work}/gkd", lmbda=0.5, beta=0.5, max_new_tokens=16,
                           **common),
            train_dataset=kd_data, processing_class=tok)
        EnergyCallback.attach(trainer, run)  # raydistill
        trainer.train()
        scores = {}
        with run.stage("evaluation") as s:
            scores["student_token_acc"] = token_accuracy(trainer.model, tok, held_out, s)
            scores["teacher_token_acc"] = token_accuracy(teacher, tok, held_out, s)
        if a.baseline:  # the same student without the teacher, on the references
            sft = SFTTrainer(
                model=AutoModelForCausalLM.from_pretrained(a.student),
                args=SFTConfig(output_dir=f"{work}/sft", **common),
                train_dataset=Dataset.from_list([chat(r, r["response"]) for r in train_rows]),
                processing_class=tok)
            EnergyCallback.attach(sft, run, trial="sft")
            sft.train()
            with run.stage("evaluation", trial="sft") as s:
                sft_acc = token_accuracy(sft.model, tok, held_out, s)
            run.scores("sft", {"student_token_acc": sft_acc})
        run.scores("gkd", scores, baseline="sft" if a.baseline else None)  # raydistill
    print(f"run written to {a.out}: raydistill report {a.out}")


if __name__ == "__main__":
    main()
