"""The runtime stands alone: importing what phm-run needs for text and generating over ONNX Runtime
loads neither torch, transformers, graphsurgeon nor the exporter or trainer (on a Jetson the runtime
should need none of them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "onnx_graphsurgeon", "phm.export", "phm.trainer")


def test_runtime_modules_import_no_heavy_package():
    code = ("import sys\n"
            "import phm.runtime, phm.runtime.cli, phm.runtime.ort_backend, phm.runtime.trt_backend, "
            "phm.runtime.generate, phm.runtime.vlm, phm.runtime.tokenizer, phm.common.artifacts\n"
            f"heavy = sorted(m for m in sys.modules if m.startswith({HEAVY!r}))\n"
            "print(','.join(heavy)); sys.exit(bool(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"imported: {proc.stdout.strip()} {proc.stderr[-1000:]}"


def test_text_generation_loads_no_heavy_package(tmp_path):
    """phm-run over a real export, in a fresh interpreter: what it imported by the end."""
    from phm.export import ExportConfig, export_model
    from tinymodels import save_char_tokenizer, save_tiny_model

    art = export_model(save_char_tokenizer(save_tiny_model("llama", tmp_path / "llama")), ExportConfig(),
                       tmp_path / "art")
    code = ("import sys\n"
            "from phm.runtime.cli import main\n"
            f"sys.argv = ['phm-run', {str(art)!r}, '--prompt', 'hello', '--max-new-tokens', '4']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"heavy = sorted(m for m in sys.modules if m.startswith({HEAVY!r}))\n"
            "print('HEAVY:' + ','.join(heavy), file=sys.stderr); sys.exit(3 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_runtime_only_install_runs_phm_run(tmp_path):
    """`pip install "phm-edge[runtime]"` into a fresh venv (CI pins): no torch there, and its phm-run
    generates, from an fp32 and an --int8 export of a tiny Llama, the tokens of the full install's."""
    from phm.export import ExportConfig, export_model
    from tinymodels import save_char_tokenizer, save_tiny_model

    root = Path(__file__).resolve().parents[2]
    model = save_char_tokenizer(save_tiny_model("llama", tmp_path / "llama"))
    arts = {name: export_model(model, ExportConfig(int8=name == "int8"), tmp_path / name) for name in ("fp32", "int8")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
                          str(root / "constraints" / "cpu.txt"), f"{root}[runtime]"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "the runtime install pulled torch"
    for name, art in arts.items():
        argv = [str(art), "--prompt", "hello", "--max-new-tokens", "6", "--json"]
        alone = subprocess.run([str(venv / "bin" / "phm-run"), *argv], capture_output=True, text=True, timeout=300)
        full = subprocess.run([str(Path(sys.executable).parent / "phm-run"), *argv], capture_output=True, text=True,
                              timeout=300)
        assert alone.returncode == 0 and full.returncode == 0, (name, alone.stderr[-2000:], full.stderr[-2000:])
        assert json.loads(alone.stdout)["tokens"] == json.loads(full.stdout)["tokens"], name
