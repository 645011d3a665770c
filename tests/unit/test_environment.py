from pathlib import Path

import pytest

from raydistill.cluster.environment import check_shared_storage, scheduler_metadata
from raydistill.errors import ConfigError


def test_slurm_job_is_recorded_and_nothing_outside_slurm():
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-04]", "SLURM_GPUS_ON_NODE": "8",
           "HOME": "/root"}
    meta = scheduler_metadata(env)
    assert meta == {"scheduler": "slurm", "job_id": "4242", "nodelist": "gpu[01-04]",
                    "gpus_per_node": "8"}
    assert scheduler_metadata({"HOME": "/root"}) == {}


def test_a_node_that_cannot_see_the_run_dir_is_named():
    check_shared_storage(Path("/mnt/shared/r"), {"aaaa": True, "bbbb": True})
    with pytest.raises(ConfigError, match=r"node\(s\) bbbb.*/mnt/shared"):
        check_shared_storage(Path("/tmp/r"), {"aaaa": True, "bbbb": False})


def test_a_node_that_does_not_answer_the_probe_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"not confirmed by node\(s\) bbbb") as err:
        check_shared_storage(Path("/mnt/shared/r"), {"aaaa": True, "bbbb": None})
    assert "\n" not in str(err.value) and "--out /mnt/shared" in str(err.value)
