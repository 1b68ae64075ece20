"""Run many CLI invocations as real processes for the price of one interpreter start.

    python zygote.py < cases.jsonl > results.jsonl
    in:  {"id", "argv": ["phm-export", ...], "stdout": path, "stderr": path, "fsize": int | null}
    out: {"id", "rc"}   (rc as subprocess reports it: negative = killed by that signal)

The zygote imports the installed console-script entry points (phm-*) once, then forks one child per
case. The child is an ordinary process running what the console script runs (`sys.exit(main())`)
with argv set, fd 1/2 redirected to files, optionally RLIMIT_FSIZE (writes past N bytes fail with
EFBIG: a full disk) and, like the interpreter, prints the traceback of an uncaught exception. So
exit code, stderr and anything written to disk are the process's own; only the imports are shared.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import resource
import signal
import sys
import traceback

MAX_RUNNING = 4


# What the CLIs import lazily on their paths (models, tokenizers, ORT sessions): imported once here.
WARM_IMPORTS = ("transformers", "peft", "onnxruntime", "safetensors.torch")


def _entry_points() -> dict:
    eps = importlib.metadata.entry_points(group="console_scripts")
    mains = {ep.name: ep.load() for ep in eps if ep.name.startswith("phm-")}
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    return mains


def _child(case: dict, mains: dict) -> None:
    """Never returns: the case's exit status is the process's."""
    code = 1
    try:
        out = os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        if case.get("fsize"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], case["fsize"]))
        sys.argv = list(case["argv"])
        try:
            sys.exit(mains[case["argv"][0]]())
        except SystemExit as e:  # what the interpreter does with sys.exit(x)
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    mains = _entry_points()
    cases = [json.loads(line) for line in sys.stdin if line.strip()]
    running: dict[int, str] = {}
    results = []

    def reap() -> None:
        pid, status = os.wait()
        results.append({"id": running.pop(pid), "rc": os.waitstatus_to_exitcode(status)})

    for case in cases:
        while len(running) >= MAX_RUNNING:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(case, mains)
        running[pid] = case["id"]
    while running:
        reap()
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
