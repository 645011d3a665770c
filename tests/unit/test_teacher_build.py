"""The teacher's fine-tuning (steps > 0) from a pretrained model: fp32 master weights, inputs
moved to where the model's layers are (on a GPU: spread over the task's GPUs, bf16 forward),
saved with its generation config. The same code on CPU and, marked gpu, on a GPU."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow  # builds the local hub-shaped models (~10 s on 2 cores)

ROWS = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
         "response": str(2 * i)} for i in range(6)]


@pytest.fixture(scope="module")
def qwen_teacher(tmp_path_factory):
    from raydistill.data.local_models import make_local_models

    return make_local_models(tmp_path_factory.mktemp("models"))["qwen2-teacher"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_pretrained_teacher_fine_tunes_where_its_weights_are(device, qwen_teacher, tmp_path):
    from raydistill.distill.stages import train_lm
    from raydistill.distill.teacher import load_model_and_tokenizer

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    model, _ = load_model_and_tokenizer(str(qwen_teacher), train=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the master copy
    assert {p.device.type for p in model.parameters()} == {device}
    data = tmp_path / "teacher.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    result = train_lm({"model": str(qwen_teacher), "steps": 2, "lr": 1e-3, "batch_size": 4},
                      str(data), str(out), 0,
                      {"max_prompt_tokens": 32, "max_response_tokens": 8}, seen.append)
    assert result["tokens"] == sum(seen) > 0 and result["final_loss"] > 0
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
