"""The console: raydistill's lines on the terminal, every library's output in the run's log
(file descriptors moved, so C++ and child processes too), and the progress line's figures are
the results table's."""

import subprocess
import sys
import textwrap
from pathlib import Path

from raydistill.cluster.progress import stage_line
from raydistill.results import energy_frame, stage_totals

ROOT = Path(__file__).resolve().parents[2]


def _row(window, phase, start, end, energy, tokens, device="GPU-0"):
    return {"window_id": window, "trial_id": "t", "stage": "teacher_generation",
            "node_id": "n1", "device_id": device, "device_kind": "gpu", "t_start_s": start,
            "t_end_s": end, "duration_s": end - start, "tokens": tokens, "energy_j": energy,
            "idle_j": 0.0, "above_idle_j": energy, "method": "counter", "sources": "nvml",
            "shared": False, "share": 1.0, "n_samples": 10, "gap_s": 0.0, "n_gaps": 0,
            "counter_resets": 0, "open": False, "phase": phase, "generated_tokens": 0}


ROWS = [_row("w1", "load", 0.0, 4.0, 1200.0, 0), _row("w2", "work", 4.0, 6.0, 600.0, 5000),
        _row("w2", "work", 4.0, 6.0, 400.0, 5000, device="GPU-1")]  # one window, two GPUs


def test_the_done_line_holds_the_tables_figures():
    line = stage_line("teacher_generation", "t", 6.04, ROWS, done=True)
    table = stage_totals(energy_frame(ROWS)).iloc[0]
    assert table["energy_j"] == 2200.0 and table["load_j"] == 1200.0
    assert table["tokens_per_s"] == 2500.0  # the window's tokens once, not once per GPU
    assert line == ("teacher_generation [t]: done in 6.04 s, 2.20 kJ (model load 1.20 kJ), "
                    "2,500 tokens/s steady state")


def test_running_and_unmeasured_lines():
    assert stage_line("evaluation", "t", 20.0, ROWS[:1], done=False) == \
        "evaluation [t]: 20.0 s so far, 1.20 kJ"
    assert stage_line("evaluation", "t", 3.0, [], done=True) == \
        "evaluation [t]: done in 3.00 s, no energy measured"
    # before the first window (workers starting) there is nothing to show, not 0 J
    assert stage_line("student_training", "t", 20.0, [], done=False) == \
        "student_training [t]: 20.0 s so far, no window open yet"
    # a stage that waited long before its windows says both durations, the table's in brackets
    assert stage_line("teacher_generation", "t", 20.0, ROWS, done=True).startswith(
        "teacher_generation [t]: done in 20.0 s (6.00 s in its windows), 2.20 kJ")
    # no tokens (a teacher that only trained): no rate is invented
    assert "tokens/s" not in stage_line("x", "t", 4.0, [_row("w", "work", 0, 4, 10.0, 0)],
                                        done=True)


NOISY = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from raydistill.console import quiet
    logging.basicConfig(level=logging.INFO)
    run = Path(sys.argv[1])
    with quiet() as console:
        os.write(2, b"[E core_worker.cc:2465] C++ straight to fd 2\\n")
        print("a library's print")
        logging.getLogger("ray.data").info("streaming_executor: starting")
        console.say("stage one: done")
        console.keep_log_in(run / "logs")  # the run directory exists now
        subprocess.run([sys.executable, "-c", "print('a child process, tqdm 50%|##')"])
        warnings.warn("a DeepSpeed-style warning")
        logging.getLogger("raydistill.x").warning("no sampler on 1 node")
        console.say("report: " + os.environ.get("TQDM_DISABLE", "-"))
        if len(sys.argv) > 2:
            raise RuntimeError("boom")
    print("after: " + os.environ.get("TQDM_DISABLE", "unset"))
""")


def _noisy(tmp_path, *extra):
    return subprocess.run([sys.executable, "-c", NOISY, str(tmp_path / "run"), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_only_raydistills_lines_reach_the_terminal_and_the_log_keeps_the_rest(tmp_path):
    proc = _noisy(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[raydistill] stage one: done",
        "[raydistill] warning: no sampler on 1 node",
        "[raydistill] report: 1",  # tqdm is off for what runs inside
        "after: unset"]  # and restored after
    assert proc.stderr == ""
    log = (tmp_path / "run" / "logs" / "console.log").read_text()
    lines = ["C++ straight to fd 2", "a library's print", "streaming_executor: starting",
             "a child process", "a DeepSpeed-style warning", "no sampler on 1 node"]
    positions = [log.index(s) for s in lines]  # everything, in the order it came
    assert positions == sorted(positions)


def test_a_crash_before_the_run_directory_keeps_the_log_and_says_where(tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os
        from raydistill.console import quiet
        with quiet():
            os.write(2, b"what the library said before it died\\n")
            raise RuntimeError("boom")
    """)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    note = [line for line in proc.stderr.splitlines() if "the libraries' output is in" in line]
    assert len(note) == 1 and "RuntimeError: boom" in proc.stderr
    kept = Path(note[0].rsplit(" ", 1)[1])
    assert "what the library said" in kept.read_text()
    kept.unlink()


def test_a_crash_in_a_run_is_on_the_terminal_and_its_log_in_the_run(tmp_path):
    proc = _noisy(tmp_path, "fail")
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr
    assert "a child process" in (tmp_path / "run" / "logs" / "console.log").read_text()


def test_verbose_changes_nothing(capsys):
    from raydistill.console import quiet

    with quiet(verbose=True) as console:
        print("library")
        console.say("ours")
    assert capsys.readouterr().out == "library\n[raydistill] ours\n"
    assert console.log_path is None


class _Trial:
    def __init__(self, trial_id, config, last_result=None):
        self.trial_id, self.config, self.last_result = trial_id, config, last_result


def test_sweep_progress_lines_survive_tuner_pkl(capsys):
    """Tune pickles its callbacks into tuner.pkl: one holding the terminal must still pickle
    (else --resume finds an empty tuner.pkl), and the restored copy speaks where it is told."""
    from ray import cloudpickle

    from raydistill.console import Console
    from raydistill.search.control import ProgressCallback, say_to

    cb = ProgressCallback(Console(stream=sys.stdout).say)
    trial = _Trial("t1", {"lr": 0.1})
    cb.on_trial_start(0, [trial], trial)
    trial.last_result = {"trial_id": "a-1", "status": "finished", "quality": 0.5,
                         "quality_test": 0.7, "energy_j": 2500.0}
    cb.on_trial_complete(0, [trial], trial)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[raydistill] trial t1 started (1 so far): lr=0.1"
    assert out[1].startswith("[raydistill] trial a-1: finished after ")
    assert out[1].endswith(", dev quality 0.500 (test 0.700), 2.50 kJ")  # dev decides

    restored = cloudpickle.loads(cloudpickle.dumps(cb))
    heard: list[str] = []
    say_to(heard.append)
    try:
        restored.on_trial_error(0, [trial], trial)
    finally:
        say_to(None)
    assert heard and heard[0].startswith("trial a-1: failed after ")


def test_the_log_keeps_its_head_and_its_latest_output_within_its_bound(tmp_path):
    from raydistill.console_log import CappedLog

    log = CappedLog(tmp_path / "console.log", head_bytes=1000, tail_bytes=700)
    lines = [f"line {i:05d}\n".encode() for i in range(2000)]  # 22 kB
    for line in lines:
        log.write(line)
    (tmp_path / "run").mkdir()
    moved = log.move_to(tmp_path / "run" / "console.log")
    moved.write(b"after the move\n")
    moved.close()
    files = moved.files()
    assert [f.name for f in files] == ["console.log", "console.log.tail.1", "console.log.tail"]
    assert not (tmp_path / "console.log").exists()  # moved, not copied
    text = [f.read_bytes() for f in files]
    assert sum(map(len, text)) <= 1000 + 2 * 700 + 200  # head, two tails, the note
    assert text[0].startswith(b"line 00000\n")  # the beginning is kept
    assert b"latest output is in console.log.tail" in text[0]
    assert text[2].endswith(b"line 01999\nafter the move\n")  # and the end
    tails = text[1] + text[2]
    assert tails.index(b"line 01980") < tails.index(b"line 01990")  # in order


BIG = textwrap.dedent("""
    import subprocess, sys
    from pathlib import Path
    from raydistill.console import quiet
    try:  # small bounds, to see them hold
        import raydistill.console_log as cl
        cl.HEAD_BYTES, cl.TAIL_BYTES = 4000, 3000
    except ImportError:  # code without a bound
        pass
    with quiet() as console:
        console.keep_log_in(Path(sys.argv[1]))
        # a worker's output, forwarded to the driver for hours
        subprocess.run([sys.executable, "-c",
                        "for i in range(20000): print(f'worker line {i:06d}')"])
        print("the driver's last line")
""")


def test_a_long_runs_console_log_stays_bounded(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BIG, str(tmp_path / "logs")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    logs = sorted((tmp_path / "logs").iterdir())
    assert sum(p.stat().st_size for p in logs) <= 4000 + 2 * 3000 + 200  # ~300 kB written
    head = (tmp_path / "logs" / "console.log").read_text()
    assert head.startswith("worker line 000000\n")
    assert (tmp_path / "logs" / "console.log.tail").read_text().endswith(
        "worker line 019999\nthe driver's last line\n")


FAILS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from raydistill import cli
    from raydistill.console import quiet
    from raydistill.errors import RayDistillError

    def run(args):  # a run that fails once its directory exists
        with quiet() as console:
            console.keep_log_in(Path(sys.argv[1]))
            print("what Ray said before the end")
            raise RayDistillError("trial t1 failed: a worker died")

    cli._run = run
    sys.exit(cli.main(["run", "config.yaml"]))
""")


def test_a_failed_run_names_its_console_log_in_its_error(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FAILS, str(tmp_path / "logs")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    log = tmp_path / "logs" / "console.log"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"raydistill: trial t1 failed: a worker died (the libraries' output: {log})")
    assert "what Ray said" in log.read_text()
