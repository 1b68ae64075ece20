"""phm-build-plugins on a full disk: generated/ is swapped in whole, so a write that fails part way
(EFBIG under RLIMIT_FSIZE, the same path as a full disk) leaves the previous complete sources and
no temporary file; the CLI's one-line I/O error is a case in test_bad_inputs.py."""

from __future__ import annotations

import os
import resource
import signal

from faultkit import snapshot


def test_failed_write_keeps_the_previous_generated_sources(tmp_path):
    from phm.trt_plugins import aot
    from phm.trt_plugins.build import write_generated

    specs = aot.all_specs([87])[:2]
    results = aot.compile_specs(specs, 1)  # two real cubins (Triton AOT, no GPU needed)
    gen = tmp_path / "generated"
    write_generated(specs, results, gen)
    before = snapshot(tmp_path)
    assert {"generated/manifest.json", "generated/phm_kernel_table.c", "generated/sources.cmake"} <= set(before)
    pid = os.fork()
    if pid == 0:  # child: a disk that fills after 4 KiB of new data
        code = 0
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
            write_generated(specs, results, gen)
        except OSError:
            code = 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3, "the write did not fail with an OSError"
    assert snapshot(tmp_path) == before  # previous sources intact, no .tmp dir or file left
