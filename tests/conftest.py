import os

import pytest

# Local Ray clusters in tests: no token auth, no dashboard, quiet.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    try:
        import pynvml

        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and driver")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def native_run(tmp_path_factory):
    """One CI-sized `raydistill run --report` per session (see tests/native_run.py)."""
    from tests.native_run import make_native_run

    return make_native_run(tmp_path_factory.mktemp("native"))


@pytest.fixture(scope="session")
def qwen_models(tmp_path_factory):
    """Hub-shaped Qwen2.5 models on the real Qwen tokenizer (151,665 tokens; 152,064-row
    Instruct teacher, 151,936-row Instruct and base students), built once per session:
    name -> directory (see raydistill/data/qwen_models.py)."""
    from raydistill.data.qwen_models import make_qwen_models

    return make_qwen_models(tmp_path_factory.mktemp("qwen_models"))
