"""A sweep scheduler stops an on-policy trial by killing its trial actor: no `finally` runs, so
`close_pool` never does. The scoring pool's actors are owned by that actor (not detached), so
Ray ends them with it, and the node's sampler closes their open windows as it does for a lost
worker (`closed_by` process_gone): no teacher_scoring window stays open, billing on."""

import time

import pytest
import ray

import raydistill
from tests.sim_world import sim_world, square_gpu_node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with sim_world(tmp_path_factory.mktemp("pool-owner"),
                   square_gpu_node("GPU-sim-pool-0000")) as w:
        yield w


@ray.remote(num_cpus=0)
class TrialActor:
    """Stands for a Tune trial's actor: it starts the pool and is killed mid-training."""

    def start(self, model: str, namespace: str, trial: str, rows: int) -> list:
        from raydistill.distill.teacher_scoring import start_pool

        self.pool = start_pool(model, namespace, trial, num_actors=1, world=1, use_gpu=False,
                               gpus_per_actor=1, rows=rows, top_k=4, temperature=1.0)
        # one request: on CPU the pool's idle window opens at the first one
        ray.get(self.pool[0].score.remote([[1, 2, 3, 4, 5]], [3]))
        return self.pool


def test_a_killed_trial_takes_its_scoring_pool_and_closes_its_windows(world):
    from transformers import AutoConfig

    from raydistill.cluster.ledger_actor import get_ledger

    root, cfg, _, models = world
    teacher = str(models["qwen2-teacher"])
    rows = AutoConfig.from_pretrained(teacher).vocab_size
    with raydistill.track(out=root / "run", sampling=cfg, trial="op") as run:
        owner = TrialActor.remote()
        (scorer,) = ray.get(owner.start.remote(teacher, run.namespace, "op", rows))
        ledger = get_ledger(run.namespace)

        def open_scoring() -> list:
            return [w for w in ray.get(ledger.open_windows.remote())
                    if w["stage"] == "teacher_scoring"]

        (idle,) = open_scoring()  # the load window closed; the idle one is open
        ray.kill(owner)  # what Tune does to a stopped trial: no finally, no close_pool
        deadline = time.time() + 60
        while True:  # the pool goes with its owner (a call just after the kill may still run)
            try:
                ray.get(scorer.ready.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                break
            assert time.time() < deadline, "the scoring actor outlived its owner"
            time.sleep(0.5)
        deadline = time.time() + 30
        while open_scoring() and time.time() < deadline:
            time.sleep(0.5)
        assert open_scoring() == []
        (closed,) = [w for w in ray.get(ledger.windows.remote())
                     if w["window_id"] == idle["window_id"]]
        assert closed["phase"] == "idle" and closed["closed_by"] == "process_gone"
