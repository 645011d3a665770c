import os

import pytest

from tests.shared_ray import SESSION_RAY as _RAY
from tests.shared_ray import spent

# Local Ray clusters in tests: no token auth, no dashboard, quiet.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "shares_ray: the module runs on the session's local Ray (fixture `shared_ray`)"
        " or needs none in this process; modules without it find no Ray of the session's up")


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

    with spent("native run (raydistill run, own process)"):
        return make_native_run(tmp_path_factory.mktemp("native"))


@pytest.fixture(scope="session")
def qwen_models(tmp_path_factory):
    """Hub-shaped Qwen2.5 models on the real Qwen tokenizer (151,665 tokens; 152,064-row
    Instruct teacher, 151,936-row Instruct and base students), built once per session:
    name -> directory (see raydistill/data/qwen_models.py)."""
    from raydistill.data.qwen_models import make_qwen_models

    with spent("Qwen2.5-shaped models"):
        return make_qwen_models(tmp_path_factory.mktemp("qwen_models"))




@pytest.fixture(scope="module", autouse=True)
def _ray_between_modules(request):
    """A module not marked `shares_ray` starts with no session Ray up (it may start its own
    cluster, or a run in it its own Ray, as before); the last module's Ray ends with the
    session."""
    if request.node.get_closest_marker("shares_ray") is None:
        _RAY.down()
    yield


@pytest.fixture(scope="module")
def shared_ray():
    """The session's local Ray, started if no module started it yet or another shut it down
    (a module's teardown must not: run, sweep and measure leave a Ray they joined up)."""
    _RAY.up()
    yield
    # left up for the next shares_ray module; a module without the mark shuts it down first


def pytest_sessionfinish(session, exitstatus):
    _RAY.down()
