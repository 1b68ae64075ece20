"""--augment-lm: reply sentences of a real chat LM (SmolLM2-135M-Instruct) as extra training text."""

import json

import pytest
from click.testing import CliRunner

from phm.trainer.cli import main
from phm.trainer.models import load_smollm2
from phm.trainer.textgen import reply_sentences
from tinymodels import tiny_model

PROMPTS = ["How are you today?", "What is your favourite book?", "Tell me about the weather."]


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_replies_are_deterministic_filtered_sentences(smollm2):
    model, tok = smollm2
    side = tok.padding_side
    a = reply_sentences(model, tok, PROMPTS, rounds=2, seed=3, max_new_tokens=32, progress=False)
    b = reply_sentences(model, tok, PROMPTS, rounds=2, seed=3, max_new_tokens=32, progress=False)
    assert a == b and len(a) >= 3 and len(set(a)) == len(a)
    assert all(len(s.split()) >= 3 and s[-1] in ".!?" and "\n" not in s for s in a)
    assert tok.padding_side == side  # restored after left-padded generation
    c = reply_sentences(model, tok, PROMPTS, rounds=1, seed=4, max_new_tokens=32, progress=False)
    assert c != a[:len(c)]  # another seed samples other replies
    skip = reply_sentences(model, tok, PROMPTS, rounds=2, seed=3, max_new_tokens=32, exclude=[a[0].upper()],
                           progress=False)
    assert skip == a[1:]  # an excluded text (any case) is never returned


def test_needs_an_lm_head_and_prompts(smollm2):
    _, tok = smollm2
    with pytest.raises(ValueError, match="causal language model"):
        reply_sentences(tiny_model("bert"), tok, PROMPTS)
    with pytest.raises(ValueError, match="needs text prompts"):
        reply_sentences(smollm2[0], tok, [])


def test_cli_augments_an_encoder_run_and_reuses_the_replies(tmp_path):
    from tinymodels import save_char_tokenizer, save_tiny_model

    bert = save_tiny_model("bert", tmp_path / "bert")
    save_char_tokenizer(bert)
    data = tmp_path / "data.txt"
    data.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    args = [str(bert), "--out", str(out), "--data", str(data), "--steps", "2", "--batch-size", "4",
            "--max-length", "16", "--augment-lm", "sample:smollm2", "--checkpoint-every", "1",
            "--hidden-weight", "2", "--recon-weight", "0.1", "--local-batches", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = (out / "augment_samples.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"augment_lm": "smollm2-135m-instruct", "rounds": 1, "seed": 0, "prompts": 3}
    replies = [json.loads(line)["text"] for line in lines[1:]]
    assert replies and all(s[-1] in ".!?" for s in replies)
    assert (out / "phm_config.json").is_file()
    cfg = json.loads((out / "distill_config.json").read_text())
    assert (cfg["hidden_weight"], cfg["recon_weight"], cfg["local_batches"]) == (2.0, 0.1, 0)
    before = (out / "augment_samples.jsonl").stat().st_mtime_ns
    result = CliRunner().invoke(main, args + ["--resume"])
    assert result.exit_code == 0, result.output
    assert (out / "augment_samples.jsonl").stat().st_mtime_ns == before  # reused, not sampled again
    # other --augment-lm settings would train on other text: refused, like any other changed setting
    no_augment = [a for a in args if a not in ("--augment-lm", "sample:smollm2")]
    for changed in (args + ["--augment-rounds", "2"], no_augment):
        result = CliRunner().invoke(main, changed + ["--resume"])
        assert result.exit_code != 0 and "conflicting settings" in result.output and "augment" in result.output
    assert (out / "augment_samples.jsonl").stat().st_mtime_ns == before
