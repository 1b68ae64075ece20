"""`phm-train`: an end-to-end run on a tiny model, resume, and bad inputs (one line, non-zero exit)."""

import json

import pytest
import torch
from click.testing import CliRunner

from phm.trainer import load
from phm.trainer.cli import main
from tinymodels import save_char_tokenizer, save_tiny_model, tiny_model


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny Llama dir with a character-level tokenizer (ids fit its 256-token vocab) and a TXT corpus."""
    root = tmp_path_factory.mktemp("cli")
    llama = save_tiny_model("llama", root / "llama")
    save_char_tokenizer(llama)
    data = root / "data.txt"
    data.write_text("".join(f"sample sentence number {i} about PHM layers\n" for i in range(40)))
    return llama, data


def test_end_to_end_train_resume_and_reload(tiny_dirs, tmp_path):
    llama, data = tiny_dirs
    out = tmp_path / "out"
    result = _run(llama, "--out", out, "--data", data, "--steps", 6, "--batch-size", 4, "--checkpoint-every", 2,
                  "--local-epochs", 1)
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "phm_config.json", "distill_config.json", "train_log.jsonl",
            "train_state", "tokenizer.json"} <= names
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and {"loss", "kd", "lam"} <= set(log[-1])
    assert [e["layer"] for e in log if e["stage"] == "local"] == ["model.layers.0", "model.layers.1"]
    model = load(out)
    ids = torch.randint(3, 200, (1, 9))
    before = model(input_ids=ids).logits
    # resuming a finished run changes nothing and rewrites the same checkpoint
    result = _run(llama, "--out", out, "--data", data, "--steps", 6, "--batch-size", 4, "--checkpoint-every", 2,
                  "--local-epochs", 1, "--resume")
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(load(out)(input_ids=ids).logits, before, rtol=0, atol=0)
    # the same options without --resume refuse to overwrite
    result = _run(llama, "--out", out, "--data", data, "--steps", 6)
    assert result.exit_code != 0 and "exists and is not empty" in result.output


def test_pack_trains_on_full_windows(tiny_dirs, tmp_path):
    llama, data = tiny_dirs
    out = tmp_path / "packed"
    result = _run(llama, "--out", out, "--data", data, "--steps", 2, "--batch-size", 4, "--max-length", 32, "--pack")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "distill_config.json").read_text())["pack"] is True
    load(out)
    out = tmp_path / "plain"
    result = _run(llama, "--out", out, "--data", data, "--steps", 1, "--batch-size", 4, "--no-group-by-length")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "distill_config.json").read_text())["group_by_length"] is False


def _bad_arch_dir(tmp_path):
    import transformers

    cfg = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    return tmp_path / "neox"


@pytest.mark.parametrize("case,message", [
    ("missing_dir", "does not exist"),
    ("not_hf_dir", "has no config.json"),
    ("corrupt_weights", "cannot load weights"),
    ("unsupported_arch", "unsupported architecture 'gpt_neox'; supported: bert, dinov2"),
    ("indivisible", "is not divisible by n=3"),
    ("bad_bases", "num_bases must be in 1..4"),
    ("steps_and_epochs", "--steps and --epochs conflict"),
    ("empty_data", "is empty"),
    ("resume_nothing", "no training state to resume"),
    ("bad_towers", "expected a comma-separated subset of language, vision"),
    ("bad_sample", "unknown sample model 'gpt5'"),
    ("pack_with_images", "--pack applies to text data; this data has images"),
    ("augment_lm_missing", "does not exist"),
    ("augment_with_images", "--augment-lm applies to text data; this data has images"),
])
def test_bad_inputs_give_one_line_and_nonzero_exit(case, message, tiny_dirs, tmp_path):
    llama, data = tiny_dirs
    out = tmp_path / "out"
    args = [llama, "--out", out, "--data", data, "--steps", 1]
    if case == "missing_dir":
        args[0] = tmp_path / "nope"
    elif case == "not_hf_dir":
        args[0] = tmp_path
    elif case == "corrupt_weights":
        broken = tmp_path / "broken"
        tiny_model("llama").save_pretrained(broken)
        (broken / "model.safetensors").write_bytes(b"garbage")
        args[0] = broken
    elif case == "unsupported_arch":
        args[0] = _bad_arch_dir(tmp_path)
    elif case == "indivisible":
        args += ["--n", 3, "--bases", 2]
    elif case == "bad_bases":
        args += ["--bases", 5]
    elif case == "steps_and_epochs":
        args += ["--epochs", 1]
    elif case == "empty_data":
        (tmp_path / "empty.txt").write_text("\n")
        args[4] = tmp_path / "empty.txt"
    elif case == "resume_nothing":
        args += ["--resume"]
    elif case == "bad_towers":
        args += ["--towers", "audio"]
    elif case == "bad_sample":
        args[0] = "sample:gpt5"
    elif case in ("pack_with_images", "augment_with_images"):  # refused before any processor is looked for
        from PIL import Image

        (tmp_path / "images").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
        (tmp_path / "images" / "a.txt").write_text("a black square")
        args[4] = tmp_path / "images"  # (an --out inside the data folder would be refused first)
        args += ["--pack"] if case == "pack_with_images" else ["--augment-lm", llama]
    elif case == "augment_lm_missing":
        args += ["--augment-lm", tmp_path / "no-lm"]
    result = _run(*args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() or case == "resume_nothing"  # nothing half-written


def test_data_free_run_samples_from_the_teacher(tiny_dirs, tmp_path):
    llama, _ = tiny_dirs
    out = tmp_path / "out"
    result = _run(llama, "--out", out, "--data-free-samples", 8, "--max-length", 12, "--steps", 2,
                  "--batch-size", 4)
    assert result.exit_code == 0, result.output
    samples = [json.loads(line)["text"] for line in (out / "teacher_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(samples)
    assert (out / "phm_config.json").is_file()
