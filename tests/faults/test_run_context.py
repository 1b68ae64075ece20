"""phm-run stays inside the exported context and streams: a prompt that does not fit is one line
with both numbers, --max-new-tokens past the context is capped with a warning, the text appears on
stdout as it is generated, and Ctrl-C keeps what was printed (exit 130)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from faultkit import cli, env, run


def _context(art: Path) -> int:
    return json.loads((art / "manifest.json").read_text())["memory_plan"]["context"]


def test_prompt_longer_than_the_context_is_refused_with_both_numbers(inputs):
    context = _context(inputs.artifacts)
    proc = run([cli("phm-run"), inputs.artifacts, "--prompt", "x" * (context + 40)])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert lines[-1].startswith(f"Error: the prompt is {context + 40}") and \
        f"tokens but the exported context is {context} (prompt + generated tokens)" in lines[-1], lines[-1]


def test_max_new_tokens_past_the_context_is_capped_with_a_warning(inputs):
    context = _context(inputs.artifacts)
    proc = run([cli("phm-run"), inputs.artifacts, "--prompt", "hello", "--max-new-tokens", "1000000000", "--json"],
               timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    room = context - len(out["prompt_ids"])
    assert f"Warning: --max-new-tokens 1000000000 capped at {room}: " in proc.stderr
    assert 1 <= len(out["tokens"]) <= room


def test_streamed_text_is_the_generated_text(inputs):
    argv = [cli("phm-run"), inputs.artifacts, "--prompt", "hello", "--max-new-tokens", 40]
    streamed, whole = run(argv), run([*argv, "--json"])
    assert streamed.returncode == whole.returncode == 0, streamed.stderr[-2000:]
    assert streamed.stdout == json.loads(whole.stdout)["text"] + "\n"


def test_ctrl_c_keeps_the_printed_tokens_and_exits_130(inputs, tmp_path):
    """A long generation (the tiny model with an 8k context) interrupted after its first text: what was
    streamed stays on stdout, ended by a newline, and the last stderr line says it was interrupted."""
    model = Path(shutil.copytree(inputs.phm, tmp_path / "long"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    art = tmp_path / "art"
    assert run([cli("phm-export"), model, "--out", art, "--context", 8192]).returncode == 0
    proc = subprocess.Popen([cli("phm-run"), str(art), "--prompt", "hello", "--max-new-tokens", "8000",
                             "--temperature", "1.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    first = proc.stdout.read(1)  # the first streamed character: generation is under way
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    printed, err = (first + rest).decode(), err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert err.rstrip().splitlines()[-1] == "Error: interrupted (Ctrl-C)" and "Traceback" not in err
    assert len(printed) > 1 and printed.endswith("\n")
    assert "decode" not in err  # no timing line: it did not run to the end
