"""One writer per output: phm-export, phm-train and phm-build-plugins refuse an output another live
process is writing (one line naming its pid, nothing changed), take over the lock a dead one left,
and a soak of killed and concurrent exports on one --out never leaves a mix of two runs.

The holder in the refusal cases is a real process holding the same advisory lock the tools take
(`phm.common.fsutil.output_lock`), so the check does not depend on winning a timing race.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import cli, env, run, snapshot

HOLD = ("import sys, time\n"
        "from phm.common.fsutil import output_lock\n"
        "with output_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n")


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _argv(tool: str, inputs, out: Path) -> list:
    return {"phm-export": [cli("phm-export"), inputs.phm, "--out", out, "--overwrite"],
            "phm-train": [cli("phm-train"), inputs.llama, "--out", out, "--data", inputs.data, "--steps", 1,
                          "--batch-size", 2, "--max-length", 16, "--init", "projection"],
            "phm-build-plugins": [cli("phm-build-plugins"), "--arch", "sm_87", "--out", out]}[tool]


@pytest.mark.parametrize("tool", ["phm-export", "phm-train", "phm-build-plugins"])
def test_second_writer_is_refused_naming_the_holder(tool, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("a previous run's output")
    holder = _holder(out)
    try:
        before = snapshot(tmp_path)
        proc = run(_argv(tool, inputs, out))
    finally:
        holder.kill()
        holder.wait()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1] == (f"Error: output {out} is being written by another process (pid {holder.pid}); "
                         "wait for it to finish or choose another output"), lines[-1]
    assert snapshot(tmp_path) == before


def test_lock_of_a_dead_writer_is_taken_over_and_removed(inputs, tmp_path):
    out = tmp_path / "art"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)  # dies holding the lock: the file stays, the kernel drops the flock
    holder.wait()
    assert (tmp_path / ".art.lock").read_text().strip() == str(holder.pid)
    proc = run([cli("phm-export"), inputs.phm, "--out", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # the stale lock file is gone too


def _verify(art: Path) -> str:
    from test_kill9 import _verify as verify_complete

    verify_complete(art)
    return (art / "manifest.json").read_text()


def test_soak_killed_and_concurrent_exports_leave_one_complete_run(inputs, tmp_path):
    """20 exports killed at seeded moments (SIGINT, SIGTERM, SIGKILL), then 10 rounds of two exports
    started together on one --out: after every run the output is absent or one run's complete
    artifacts (hashes verify), each loser says who holds the lock, and the input is never touched."""
    before_input = snapshot(inputs.phm)
    out = tmp_path / "work" / "art"
    out.parent.mkdir()
    rng = random.Random(1)
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
    killed = []
    for i in range(20):
        victim = subprocess.Popen([cli("phm-export"), str(inputs.phm), "--out", str(out), "--overwrite"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
        time.sleep(rng.uniform(0.5, 6.0))
        sig = signals[i % 3]
        victim.send_signal(sig)
        _, err = victim.communicate(timeout=120)
        killed.append((sig.name, victim.returncode))
        # (a signal while the interpreter is still importing is Python's own KeyboardInterrupt traceback;
        # once the command runs, SIGINT/SIGTERM unwind it and end in one line, exit 130/143)
        if victim.returncode in (130, 143):
            assert err.rstrip().splitlines()[-1].startswith("Error: "), err[-2000:]
        if out.exists():
            _verify(out)
    assert any(rc != 0 for _, rc in killed), f"every export finished before its signal: {killed}"
    refused = 0
    for _ in range(10):
        pair = [subprocess.Popen([cli("phm-export"), str(inputs.phm), "--out", str(out), "--overwrite"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
                for _ in range(2)]
        results = [(p.pid, *p.communicate(timeout=300)[1:], p.returncode) for p in pair]
        for pid, err, rc in results:
            other = next(q for q, *_ in results if q != pid)
            assert rc == 0 or err.rstrip().endswith(f"(pid {other}); wait for it to finish or choose another "
                                                    "output"), err[-2000:]
            refused += rc != 0
        assert any(rc == 0 for *_, rc in results)
        _verify(out)
    assert refused, "no concurrent pair overlapped"
    assert sorted(p.name for p in out.parent.iterdir()) == ["art"], "temp dirs or lock files left behind"
    assert snapshot(inputs.phm) == before_input
    print(f"killed exports (signal, exit): {killed}; refused concurrent writers: {refused}/20")
