"""Bad input across the CLIs: one clear line, non-zero exit, no traceback, nothing left behind.

Table-driven: each case prepares its inputs in its own folder, runs the real console script as a
subprocess, and is judged the same way:
  - exit code non-zero (and not a signal: the process handled the failure itself);
  - no "Traceback" anywhere in stdout/stderr;
  - the last non-empty stderr line is the one `Error: …` line, and it says what the case expects;
  - the case folder is byte-for-byte what it was before (no output dir, no temp dir, an existing
    output untouched).
All cases run once per session, each in its own process forked from one that imported the entry
points (tests/faults/zygote.py), then each test checks its own result: one interpreter start for
the suite instead of one per case. test_kill9.py runs the console scripts themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import copy, run_many, snapshot

TRAIN_ARGS = ("--steps", 1, "--batch-size", 2, "--max-length", 16, "--init", "projection")


@dataclass
class Case:
    argv: list
    expect: str               # substring of the one error line
    fsize: int | None = None  # RLIMIT_FSIZE for the child (disk-full simulation)
    setup: object = None      # makes the case's pre-existing output (an existing file/dir at --out)


def _train(model, d: Path, *extra, data=None, inputs):
    return ["phm-train", model, "--out", d / "out", "--data", data or inputs.data, *TRAIN_ARGS, *extra]


def _export(model, d: Path, *extra):
    return ["phm-export", model, "--out", d / "out", *extra]


def _run(art, *extra):
    return ["phm-run", art, "--prompt", "hello", *extra]


def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _pickle_only(src: Path, d: Path) -> Path:
    """A model dir whose weights exist only as a pickle (pytorch_model.bin): must be refused, unread."""
    import torch
    from safetensors.torch import load_file

    model = copy(src, d / "model")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def _no_config(src: Path, d: Path) -> Path:
    model = copy(src, d / "model")
    (model / "config.json").unlink()
    return model


def _corrupt_config(src: Path, d: Path) -> Path:
    model = copy(src, d / "model")
    (model / "config.json").write_text('{"model_type": "llama", ')
    return model


def _truncated_weights(src: Path, d: Path) -> Path:
    model = copy(src, d / "model")
    _truncate(model / "model.safetensors")
    return model


def _file(d: Path, name="out") -> Path:
    (d / name).write_text("not a directory")
    return d / name


def _nonempty_out(d: Path) -> Path:
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("mine")
    return d / "out"


def _artifacts_with(inputs, d: Path, edit) -> Path:
    art = copy(inputs.artifacts, d / "art")
    edit(art)
    return art


def _fake_engine(art: Path) -> None:
    (art / "engines").mkdir()
    (art / "engines" / "decoder.agx-orin.engine").write_bytes(b"not an engine")
    _edit_json(art / "manifest.json", engines={"decoder": "engines/decoder.agx-orin.engine"})


def _engine_from_commands_sh(art: Path) -> None:
    """What running commands.sh's trtexec line leaves: engines/decoder.<target>.engine, manifest unchanged."""
    (art / "engines").mkdir()
    (art / "engines" / "decoder.agx-orin.engine").write_bytes(b"not an engine")


def _other_plugin_version(art: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    for record in (manifest["plugins"], *(g.get("plugins", []) for g in manifest["graphs"].values())):
        for plugin in record:
            plugin["version"] = "0"
    (art / "manifest.json").write_text(json.dumps(manifest))


def _plugin_sources() -> Path:
    """The installed package's plugin sources (what phm-build-plugins compiles)."""
    from phm.trt_plugins.build import PLUGINS_DIR

    return PLUGINS_DIR


def _image(d: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(d / "cat.png")
    return d / "cat.png"


def _unsupported_type(src: Path, d: Path) -> Path:
    model = copy(src, d / "model")
    _edit_json(model / "config.json", model_type="gpt_neox")
    return model


def _dinov2(d: Path) -> Path:
    """A vision-only backbone: the trainer knows its MLPs, the exporter has no graph split for it."""
    import transformers

    transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                       image_size=28, patch_size=7)).save_pretrained(d / "dinov2")
    return d / "dinov2"


def _empty_dir(d: Path) -> Path:
    (d / "calib").mkdir()
    return d / "calib"


def _empty_jsonl(d: Path) -> Path:
    (d / "data.jsonl").write_text("\n\n")
    return d / "data.jsonl"


def _model(src: Path, d: Path) -> Path:
    return copy(src, d / "model")


def _symlink(d: Path, target: Path) -> Path:
    (d / "link").symlink_to(target, target_is_directory=True)
    return d / "link"


def _data_inside_out(inputs, d: Path) -> Path:
    (d / "out").mkdir()
    return Path(__import__("shutil").copy(inputs.data, d / "out" / "data.txt"))


def _calib_dir(d: Path) -> Path:
    (d / "calib").mkdir()
    (d / "calib" / "prompts.txt").write_text("calibrate on this\n")
    return d / "calib"


def _model_with_config(src: Path, d: Path, edit) -> Path:
    """A copy of the model dir whose config.json (or phm_config.json) is valid JSON of the wrong form."""
    model = copy(src, d / "model")
    edit(model)
    return model


def _set_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(edit(doc)))


def _decoder_io_not_a_list(manifest: dict) -> dict:
    decoder = {**manifest["graphs"]["decoder"], "io": {"inputs": "x", "outputs": []}}
    return {**manifest, "graphs": {**manifest["graphs"], "decoder": decoder}}


def _changed_same_size(art: Path, name: str = "decoder.onnx") -> None:
    data = bytearray((art / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # other bytes, same size: only the sha256 tells
    (art / name).write_bytes(bytes(data))


# id -> (inputs, case dir) -> Case. Each id is a different failure.
CASES = {
    # phm-train ------------------------------------------------------------------------------------
    "train-missing-model-dir": lambda i, d: Case(_train(d / "nope", d, inputs=i), "does not exist"),
    "train-no-config-json": lambda i, d: Case(_train(_no_config(i.llama, d), d, inputs=i), "has no config.json"),
    "train-corrupt-config-json": lambda i, d: Case(_train(_corrupt_config(i.llama, d), d, inputs=i),
                                                   "config.json is not valid JSON"),
    "train-truncated-safetensors": lambda i, d: Case(_train(_truncated_weights(i.llama, d), d, inputs=i),
                                                     "cannot load weights"),
    "train-pickle-weights-refused": lambda i, d: Case(_train(_pickle_only(i.llama, d), d, inputs=i),
                                                      "pickle weights are never loaded"),
    "train-unsupported-model-type": lambda i, d: Case(_train(_unsupported_type(i.llama, d), d, inputs=i),
                                                      "unsupported architecture 'gpt_neox'; supported: bert,"),
    "train-n-not-dividing-names-layer": lambda i, d: Case(_train(i.llama, d, "--n", 3, inputs=i),
                                                          "layer model.layers.0.mlp.gate_proj"),
    "train-bases-zero": lambda i, d: Case(_train(i.llama, d, "--bases", 0, inputs=i), "num_bases must be in 1..4"),
    "train-bases-too-many": lambda i, d: Case(_train(i.llama, d, "--bases", 5, inputs=i), "got 5"),
    "train-bases-not-int": lambda i, d: Case(_train(i.llama, d, "--bases", "two", inputs=i),
                                             "'two' is not a valid integer"),
    "train-steps-and-epochs": lambda i, d: Case(_train(i.llama, d, "--epochs", 1, inputs=i),
                                                "--steps and --epochs conflict"),
    "train-resume-without-state": lambda i, d: Case(_train(i.llama, d, "--resume", inputs=i), "no training state",
                                                    setup=lambda: (d / "out").mkdir()),
    "train-resume-other-phm-config": lambda i, d: Case(
        ["phm-train", i.llama, "--out", copy(i.run, d / "out"), "--data", i.data, *TRAIN_ARGS[2:],
         "--steps", 2, "--checkpoint-every", 1, "--bases", 1, "--resume"], "conflicting settings"),
    "train-resume-other-lr": lambda i, d: Case(
        ["phm-train", i.llama, "--out", copy(i.run, d / "out"), "--data", i.data, *TRAIN_ARGS[2:],
         "--steps", 2, "--checkpoint-every", 1, "--lr", 0.5, "--resume"], "lr=0.5 (saved 0.0001)"),
    "train-out-is-a-file": lambda i, d: Case(_train(i.llama, d, inputs=i), "exists and is not a directory",
                                             setup=lambda: _file(d)),
    "train-out-not-empty": lambda i, d: Case(_train(i.llama, d, inputs=i), "exists and is not empty; pass --resume",
                                             setup=lambda: _nonempty_out(d)),
    "train-empty-data": lambda i, d: Case(_train(i.llama, d, data=_empty_jsonl(d), inputs=i), "is empty"),
    "train-missing-data": lambda i, d: Case(_train(i.llama, d, data=d / "nope.txt", inputs=i), "does not exist"),
    "train-disk-full": lambda i, d: Case(_train(i.llama, d, inputs=i), "File too large", fsize=16_000),
    # valid JSON of the wrong form: one line naming file and field
    "train-config-json-size-is-a-string": lambda i, d: Case(
        _train(_model_with_config(i.llama, d, lambda m: _edit_json(m / "config.json", hidden_size="big")), d,
               inputs=i), "config.json: field 'hidden_size' must be a positive integer, got 'big'"),
    "train-config-json-no-model-type": lambda i, d: Case(
        _train(_model_with_config(i.llama, d, lambda m: _set_json(m / "config.json", lambda c: {
            k: v for k, v in c.items() if k != "model_type"})), d, inputs=i), "field 'model_type' is missing"),
    "train-config-json-is-a-list": lambda i, d: Case(
        _train(_model_with_config(i.llama, d, lambda m: (m / "config.json").write_text("[1, 2]")), d, inputs=i),
        "config.json: the file must be an object, got a list"),
    # nan and inf parse as floats: every float option refuses them by name
    "train-lr-nan": lambda i, d: Case(_train(i.llama, d, "--lr", "nan", inputs=i),
                                      "Invalid value for '--lr': 'nan' is not a finite number"),
    "train-core-lr-inf": lambda i, d: Case(_train(i.llama, d, "--core-lr", "inf", inputs=i),
                                           "Invalid value for '--core-lr': 'inf' is not a finite number"),
    "train-recon-weight-nan": lambda i, d: Case(_train(i.llama, d, "--recon-weight", "NaN", inputs=i),
                                                "Invalid value for '--recon-weight': 'NaN' is not a finite number"),
    "train-epochs-minus-inf": lambda i, d: Case(
        ["phm-train", i.llama, "--out", d / "out", "--data", i.data, "--epochs", "-inf"],
        "Invalid value for '--epochs': '-inf' is not a finite number"),
    # an output that is, holds or sits in an input: refused before any work (--overwrite/--resume would replace it)
    "train-out-is-the-model-dir": lambda i, d: Case(
        ["phm-train", m := _model(i.llama, d), "--out", m, "--data", i.data, *TRAIN_ARGS, "--resume"],
        f"--out {d}/model is the model dir"),
    "train-out-contains-the-data": lambda i, d: Case(
        _train(i.llama, d, "--resume", data=_data_inside_out(i, d), inputs=i),
        f"--out {d}/out contains the training data {d}/out/data.txt"),
    # phm-export -----------------------------------------------------------------------------------
    "export-missing-model-dir": lambda i, d: Case(_export(d / "nope", d), "does not exist"),
    "export-no-config-json": lambda i, d: Case(_export(_no_config(i.phm, d), d), "has no config.json"),
    "export-corrupt-config-json": lambda i, d: Case(_export(_corrupt_config(i.phm, d), d),
                                                    "config.json is not valid JSON"),
    "export-truncated-safetensors": lambda i, d: Case(_export(_truncated_weights(i.phm, d), d), "cannot load"),
    "export-pickle-weights-refused": lambda i, d: Case(_export(_pickle_only(i.llama, d), d),
                                                       "pytorch_model.bin: pickle weights are never loaded"),
    "export-unsupported-model-type": lambda i, d: Case(_export(_dinov2(d), d),
                                                       "no ONNX export path for model_type 'dinov2'; supported: "),
    "export-out-is-a-file": lambda i, d: Case(_export(i.phm, d), "is not a directory", setup=lambda: _file(d)),
    "export-out-not-empty": lambda i, d: Case(_export(i.phm, d), "exists and is not empty",
                                              setup=lambda: _nonempty_out(d)),
    "export-int8-empty-calib-dir": lambda i, d: Case(_export(i.phm, d, "--int8", "--calib-data", _empty_dir(d)),
                                                     "is empty"),
    "export-int8-empty-calib-jsonl": lambda i, d: Case(_export(i.phm, d, "--int8", "--calib-data", _empty_jsonl(d)),
                                                       "--int8: "),
    "export-calib-data-without-int8": lambda i, d: Case(_export(i.phm, d, "--calib-data", i.data),
                                                        "--calib-data is only used with --int8"),
    "export-weights-only-without-int8": lambda i, d: Case(_export(i.phm, d, "--int8-weights-only"),
                                                          "--int8-weights-only is only used with --int8"),
    "export-int4-and-int8": lambda i, d: Case(_export(i.phm, d, "--int4", "--int8"), "are exclusive"),
    "export-int4-group-without-int4": lambda i, d: Case(_export(i.phm, d, "--int4-group", "64"),
                                                        "--int4-group is only used with --int4"),
    "export-unknown-target": lambda i, d: Case(_export(i.phm, d, "--target", "tx2"),
                                               "Invalid value for '--target': 'tx2' is not one of"),
    "export-pixel-range-on-a-text-model": lambda i, d: Case(_export(i.phm, d, "--max-pixels", 4096),
                                                            "apply to Qwen2(.5)-VL models only"),
    "export-min-pixels-zero": lambda i, d: Case(_export(i.phm, d, "--min-pixels", 0),
                                                "Invalid value for '--min-pixels'"),
    "export-context-zero": lambda i, d: Case(_export(i.phm, d, "--context", 0), "Invalid value for '--context'"),
    # hand-computed: weights 20,640 params x 4 B, KV 2*2*2*8*256*4 B, activations 256*(2*32+2*64)*4 + 256*4 B
    # + 0.5 GiB workspace, runtime 0.75 GiB: 1.2503 GiB against 1 - 0.5 (desktop OS reserve) GiB
    "export-does-not-fit-target": lambda i, d: Case(_export(i.phm, d, "--target", "desktop", "--device-gib", 1),
                                                    "needs 1.25 GiB (weights 0.00, KV cache 0.00, activations + "
                                                    "workspace 0.50, runtime 0.75), device has 0.50 GiB usable"),
    "export-device-below-os-reserve": lambda i, d: Case(_export(i.phm, d, "--target", "orin-nano", "--device-gib", 1),
                                                        "must exceed the 1.5 GiB"),
    "export-config-json-nested-wrong-type": lambda i, d: Case(
        _export(_model_with_config(i.phm, d, lambda m: _edit_json(m / "config.json", text_config={"vocab_size": -3})),
                d), "config.json: field 'text_config.vocab_size' must be a positive integer, got -3"),
    "export-phm-config-layers-not-a-list": lambda i, d: Case(
        _export(_model_with_config(i.phm, d, lambda m: _edit_json(m / "phm_config.json", layers={"a": 1})), d),
        "phm_config.json: field 'layers' must be a list, got an object"),
    "export-phm-config-layer-missing-key": lambda i, d: Case(
        _export(_model_with_config(i.phm, d, lambda m: _set_json(m / "phm_config.json", lambda c: {
            **c, "layers": [{k: v for k, v in c["layers"][0].items() if k != "in_features"}, *c["layers"][1:]]})),
                d), "phm_config.json: field 'layers[0].in_features' is missing"),
    "export-phm-config-other-version": lambda i, d: Case(
        _export(_model_with_config(i.phm, d, lambda m: _edit_json(m / "phm_config.json", format_version=7)), d),
        "phm_config.json: format_version 7 is not supported (expected 1)"),
    "export-verify-changed-file": lambda i, d: Case(
        ["phm-export", "--verify", _artifacts_with(i, d, _changed_same_size)],
        "art/decoder.onnx does not match its sha256 in manifest.json"),
    "export-verify-with-out": lambda i, d: Case(["phm-export", "--verify", i.artifacts, "--out", d / "out"],
                                                "--verify checks an existing artifacts dir and writes nothing"),
    "export-device-gib-nan": lambda i, d: Case(_export(i.phm, d, "--device-gib", "nan"),
                                               "Invalid value for '--device-gib': 'nan' is not a finite number"),
    "export-disk-full": lambda i, d: Case(_export(i.phm, d), "File too large", fsize=60_000),
    "export-out-is-the-model-dir": lambda i, d: Case(["phm-export", m := _model(i.phm, d), "--out", m, "--overwrite"],
                                                     f"--out {d}/model is the model dir {d}/model: an output never "
                                                     "replaces its own input"),
    "export-out-contains-the-model-dir": lambda i, d: Case(["phm-export", _model(i.phm, d), "--out", d, "--overwrite"],
                                                           f"--out {d} contains the model dir {d}/model"),
    "export-out-inside-the-model-dir": lambda i, d: Case(
        ["phm-export", m := _model(i.phm, d), "--out", m / "art", "--overwrite"], "lies inside the model dir"),
    "export-out-symlink-to-the-model-dir": lambda i, d: Case(
        ["phm-export", m := _model(i.phm, d), "--out", _symlink(d, m), "--overwrite"],
        f"--out {d}/link is the model dir {d}/model"),
    "export-out-is-the-calib-data": lambda i, d: Case(
        _export(i.phm, d, "--int8", "--calib-data", c := _calib_dir(d), "--out", c, "--overwrite"),
        f"--out {d}/calib is the calibration data"),
    # phm-run ----------------------------------------------------------------------------------------
    "run-missing-artifacts-dir": lambda i, d: Case(_run(d / "nope"), "is not an artifacts dir"),
    "run-no-manifest": lambda i, d: Case(_run(_artifacts_with(i, d, lambda a: (a / "manifest.json").unlink())),
                                         "no manifest.json"),
    "run-corrupt-manifest": lambda i, d: Case(
        _run(_artifacts_with(i, d, lambda a: (a / "manifest.json").write_text("{"))), "is not valid JSON"),
    "run-truncated-onnx": lambda i, d: Case(_run(_artifacts_with(i, d, lambda a: _truncate(a / "decoder.onnx"))),
                                            "the file was changed or truncated"),
    "run-image-on-text-only-model": lambda i, d: Case(_run(i.artifacts, "--image", _image(d)), "text-only model"),
    "run-missing-image-file": lambda i, d: Case(_run(i.artifacts, "--image", d / "nope.png"), "does not exist"),
    "run-engine-for-other-plugin-version": lambda i, d: Case(
        _run(_artifacts_with(i, d, _other_plugin_version), "--backend", "trt"), "plugin PHMFFN version '0'"),
    "run-trt-without-engine": lambda i, d: Case(_run(i.artifacts, "--backend", "trt"), "no TensorRT engine"),
    "run-trt-without-tensorrt": lambda i, d: Case(_run(_artifacts_with(i, d, _fake_engine), "--backend", "trt"),
                                                  "TensorRT is not installed here"),
    "run-trt-engine-from-commands-sh-without-tensorrt": lambda i, d: Case(
        _run(_artifacts_with(i, d, _engine_from_commands_sh), "--backend", "trt"), "TensorRT is not installed here"),
    "run-max-new-tokens-zero": lambda i, d: Case(_run(i.artifacts, "--max-new-tokens", 0),
                                                 "Invalid value for '--max-new-tokens'"),
    "run-max-new-tokens-negative": lambda i, d: Case(_run(i.artifacts, "--max-new-tokens", -4),
                                                     "-4 is not in the range x>=1"),
    "run-manifest-graphs-wrong-type": lambda i, d: Case(
        _run(_artifacts_with(i, d, lambda a: _edit_json(a / "manifest.json", graphs=[]))),
        "manifest.json: field 'graphs' must be an object, got a list; re-export the model"),
    "run-manifest-no-files": lambda i, d: Case(
        _run(_artifacts_with(i, d, lambda a: _set_json(a / "manifest.json", lambda m: {
            k: v for k, v in m.items() if k != "files"}))), "manifest.json: field 'files' is missing"),
    "run-manifest-io-wrong-shape": lambda i, d: Case(
        _run(_artifacts_with(i, d, lambda a: _set_json(a / "manifest.json", _decoder_io_not_a_list))),
        "field 'graphs.decoder.io.inputs' must be a list, got a string"),
    "run-manifest-newer-format": lambda i, d: Case(
        _run(_artifacts_with(i, d, lambda a: _edit_json(a / "manifest.json", format_version=4))),
        "manifest.json: format_version 4 is not supported by this phm-run (reads 3)"),
    "run-file-truncated-size-checked": lambda i, d: Case(
        _run(_artifacts_with(i, d, lambda a: _truncate(a / "decoder.ref.json"))),
        "art/decoder.ref.json is "),
    "run-verify-changed-same-size": lambda i, d: Case(
        _run(_artifacts_with(i, d, _changed_same_size), "--verify"),
        "art/decoder.onnx does not match its sha256 in manifest.json"),
    "run-image-is-a-directory": lambda i, d: Case(_run(i.artifacts, "--image", d), f"image {d} is a directory"),
    "run-temperature-nan": lambda i, d: Case(_run(i.artifacts, "--temperature", "nan"),
                                             "Invalid value for '--temperature': 'nan' is not a finite number"),
    "run-top-p-inf": lambda i, d: Case(_run(i.artifacts, "--top-p", "inf"),
                                       "Invalid value for '--top-p': 'inf' is not a finite number"),
    "run-bad-option-value-one-line": lambda i, d: Case(_run(i.artifacts, "--backend", "cuda"),
                                                       "Invalid value for '--backend': 'cuda' is not one of"),
    # phm-build-plugins ------------------------------------------------------------------------------
    "build-plugins-bad-arch": lambda i, d: Case(["phm-build-plugins", "--arch", "sm_12", "--out", d / "out"],
                                                "unknown arch 'sm_12'; supported: sm_"),
    "build-plugins-out-is-a-file": lambda i, d: Case(["phm-build-plugins", "--arch", "sm_87", "--out", _file(d)],
                                                     "is a file"),
    "build-plugins-out-under-a-file": lambda i, d: Case(
        ["phm-build-plugins", "--arch", "sm_87", "--out", _file(d) / "build"],
        f"cannot write {d}/out/build: {d}/out is a file, not a directory"),
    "export-out-under-a-file": lambda i, d: Case(_export(i.phm, d, "--out", _file(d) / "art"),
                                                 f"cannot write {d}/out/art: {d}/out is a file, not a directory"),
    "build-plugins-out-is-the-plugin-sources": lambda i, d: Case(
        ["phm-build-plugins", "--arch", "sm_87", "--out", _plugin_sources()], "is the plugin sources"),
    "build-plugins-driver-older-than-ptxas": lambda i, d: Case(
        ["phm-build-plugins", "--arch", "sm_87", "--driver-cuda", "11.4", "--out", d / "out"],
        "which a CUDA 11.4 driver cannot load: build with the target's own toolkit"),
    "build-plugins-driver-cuda-not-a-version": lambda i, d: Case(
        ["phm-build-plugins", "--arch", "sm_87", "--driver-cuda", "latest", "--out", d / "out"],
        "a CUDA version is MAJOR.MINOR (e.g. 12.6), got 'latest'"),
    "build-plugins-cuda-home-without-ptxas": lambda i, d: Case(
        ["phm-build-plugins", "--arch", "sm_87", "--cuda-home", _empty_dir(d), "--out", d / "out"],
        "no runnable ptxas at"),
    "build-plugins-out-inside-tensorrt-root": lambda i, d: Case(
        ["phm-build-plugins", "--arch", "sm_87", "--tensorrt-root", _calib_dir(d), "--out", d / "calib" / "build"],
        "lies inside the TensorRT root"),
}
CONTROL = "control-uncaught-exception"
TENSORRT_CASES = {"run-trt-without-tensorrt", "run-trt-engine-from-commands-sh-without-tensorrt"}  # meaningless where `import tensorrt` works


@pytest.fixture(scope="session")
def results(inputs, tmp_path_factory):
    """Run every case once (zygote.py: a forked process per case); {id: (Case, snapshot before, dir, proc)}."""
    import importlib.util

    has_trt = importlib.util.find_spec("tensorrt") is not None
    prepared = {}
    for name, make in CASES.items():
        if has_trt and name in TENSORRT_CASES:
            continue
        d = tmp_path_factory.mktemp(name)
        case = make(inputs, d)
        if case.setup is not None:
            case.setup()
        prepared[name] = (case, snapshot(d), d)
    logs = tmp_path_factory.mktemp("fault-logs")
    # control: an uncaught exception in a child (no such entry point) must show up as a traceback, rc 1
    procs = run_many({CONTROL: (["phm-no-such-command"], None),
                      **{name: (case.argv, case.fsize) for name, (case, _, _) in prepared.items()}}, logs)
    return {CONTROL: (None, None, None, procs.pop(CONTROL)),
            **{name: (*prepared[name], proc) for name, proc in procs.items()}}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, results):
    if name not in results:
        pytest.skip("TensorRT is importable here")
    case, before, d, proc = results[name]
    output = proc.stdout + proc.stderr
    assert proc.returncode > 0, f"exit {proc.returncode}:\n{output}"
    assert "Traceback" not in output, output
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert lines and lines[-1].startswith("Error: ") and errors == [lines[-1]], output
    assert case.expect in lines[-1], f"expected {case.expect!r} in {lines[-1]!r}"
    assert snapshot(d) == before, "the case folder changed: a partial artifact or temp dir was left behind"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def _message(name: str, results, inputs) -> str:
    """The case's error line as a reader sees it: its own folder as CASE, the shared inputs as INPUTS."""
    from phm.trt_plugins.build import PLUGINS_DIR

    _, _, d, proc = results[name]
    line = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    for path, alias in ((str(PLUGINS_DIR), "PLUGINS"), (str(d), "CASE"), (str(inputs.root), "INPUTS")):
        line = line.replace(path, alias)
    import re

    # file sizes vary with the torch/onnx versions that wrote the graph
    line = re.sub(r"is \d+ bytes, manifest.json says \d+", "is N bytes, manifest.json says M", line)
    return line.replace("|", "\\|")


def fault_table(results, inputs) -> str:
    rows = [f"| `{name}` | {_message(name, results, inputs)} |" for name in CASES]
    return "\n".join(["| case | what the tool prints (exit 1) |", "|---|---|", *rows])


def test_docs_table_lists_every_case_with_its_message(results, inputs):
    """docs/reliability.md's table is the suite's own output; PHM_WRITE_FAULT_TABLE=1 rewrites it."""
    import os

    if any(name not in results for name in CASES):
        pytest.skip("TensorRT is importable here: its cases did not run")
    table = fault_table(results, inputs)
    text = DOCS.read_text()
    head, rest = text.split(TABLE_START)
    current = rest.split(TABLE_END)[0].strip()
    if os.environ.get("PHM_WRITE_FAULT_TABLE") == "1":
        DOCS.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{rest.split(TABLE_END)[1]}")
        current = table
    assert current == table, "docs/reliability.md's fault table is stale: rerun with PHM_WRITE_FAULT_TABLE=1"


def test_harness_sees_tracebacks(results):
    proc = results[CONTROL][3]
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'phm-no-such-command'" in proc.stderr


def test_shared_inputs_untouched(inputs, results):
    assert all(not p.name.startswith(".") for p in inputs.root.rglob("*")), "a temp file among the shared inputs"


def test_diverging_training_stops_at_the_first_non_finite_step_and_keeps_the_last_good_state(inputs, tmp_path):
    """A learning rate that blows the weights up: one line at the first nan/inf loss or gradient, the
    state of the step before it on disk (finite), and --resume continues from there."""
    from faultkit import cli, run
    from safetensors.torch import load_file

    argv = [cli("phm-train"), inputs.llama, "--out", tmp_path / "out", "--data", inputs.data, *TRAIN_ARGS[2:],
            "--steps", 6, "--checkpoint-every", 1, "--lr", "1e12", "--core-lr", "1e12"]
    proc = run(argv)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("Error: training stopped at step 2: non-finite ") and \
        f"the last good state (step 1) is in {tmp_path}/out/train_state" in lines[-1], lines[-1]
    state = json.loads((tmp_path / "out" / "train_state" / "state.json").read_text())
    assert state["step"] == 1
    tensors = load_file(next((tmp_path / "out" / "train_state").glob("*.safetensors")))
    assert tensors and all(t.isfinite().all() for t in tensors.values())
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no checkpoint of a diverged run
    resumed = run([*argv, "--resume"])
    assert "resumed from step 1" in resumed.stderr and "stopped at step 2" in resumed.stderr


@pytest.mark.parametrize("kind", ["not-an-image", "truncated", "empty", "decompression-bomb", "directory"])
def test_images_pillow_refuses_are_one_line_naming_the_cause(kind, tmp_path, monkeypatch):
    """What phm-run --image reads through (runtime.vlm.load_image; the CLI path is in tests/runtime/test_vlm.py
    for VLM artifacts): every way Pillow refuses a file is one ValueError line naming the file."""
    from PIL import Image

    from phm.runtime.vlm import load_image

    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    expect = f"cannot read image {path}: "
    if kind == "not-an-image":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "decompression-bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 = 1,024 > 2x the limit: Pillow refuses
        expect = f"image {path} is too large to decode safely: "
    else:
        path = tmp_path
        expect = f"image {tmp_path} is a directory, not an image file"
    with pytest.raises(ValueError) as err:
        load_image(path)
    assert str(err.value).startswith(expect) and "\n" not in str(err.value), str(err.value)


# APIs without a CLI flag of their own in this build (phm-export --int8 is wired by the INT8 work): the
# calibration-data loader's bad inputs, one line each.
@pytest.mark.parametrize("make,expect", [
    (lambda d: d, "is empty"),                                              # empty calibration dir
    (_empty_jsonl, "is empty"),                                             # empty JSONL
    (lambda d: (d / "c.jsonl").write_text('{"text": "a"}\n{oops\n') and d / "c.jsonl", "c.jsonl:2: not valid JSON"),
    (lambda d: (d / "c.jsonl").write_text('{"text": "a", "image": "gone.png"}\n') and d / "c.jsonl", "does not exist"),
], ids=["calib-empty-dir", "calib-empty-jsonl", "calib-bad-json-line", "calib-missing-image"])
def test_calibration_data_errors(make, expect, tmp_path):
    from phm.export.calib_data import load_calibration_data

    d = tmp_path / "calib"
    d.mkdir()
    path = make(d)
    with pytest.raises(ValueError) as err:
        load_calibration_data(path)
    assert expect in str(err.value) and "\n" not in str(err.value)
