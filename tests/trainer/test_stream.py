"""--stream: text files read as the run goes (trainer/stream.py): the batch contract, the held-out split,
the file kinds, and a real phm-train run; bad combinations are one clear line."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner
from tinymodels import save_char_tokenizer, save_tiny_model

from phm.trainer.cli import main
from phm.trainer.data import split_holdout
from phm.trainer.models import load_tokenizer
from phm.trainer.stream import StreamingTokenBatches, held_out_texts, shuffled

datasets = pytest.importorskip("datasets")

TEXTS = [f"line {i} of the corpus{' and more' * (i % 4)}" for i in range(90)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    model = save_char_tokenizer(save_tiny_model("llama", root / "llama"))
    table = datasets.Dataset.from_dict({"text": TEXTS + ["", "   "]})  # blank rows are skipped
    (root / "parts").mkdir()
    table.select(range(0, 50)).to_parquet(str(root / "parts" / "a.parquet"))
    table.select(range(50, len(table))).to_parquet(str(root / "parts" / "b.parquet"))
    (root / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root, model, load_tokenizer(model)


def _texts(tok, batch) -> list[str]:
    return [tok.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_batches_are_a_function_of_the_step(corpus):
    """batch(step) read on, read again after a step behind it (init stages, resume) and from a fresh
    reader give the same rows; one pass holds every training text once, none of the held-out ones."""
    root, _, tok = corpus
    make = lambda: StreamingTokenBatches(root / "parts", tok, 4, 64, seed=3, holdout=0.2)  # noqa: E731
    stream = make()
    assert stream.rows == 92 and len(stream) == int(92 * 0.8) // 4
    first = [stream.batch(s) for s in range(8)]
    assert [_texts(tok, stream.batch(2)), _texts(tok, stream.batch(5))] == [_texts(tok, first[2]), _texts(tok, first[5])]
    assert _texts(tok, make().batch(6)) == _texts(tok, first[6])
    train, held = split_holdout(TEXTS, 0.2)
    passed = [t for s in range(len(train) // 4) for t in _texts(tok, stream.batch(s))]
    assert len(passed) == len(set(passed)) and set(passed) <= set(train) and not set(passed) & set(held)
    assert len(passed) == len(train) // 4 * 4
    assert held_out_texts(root / "parts", 0.2, 0) == held and held_out_texts(root / "parts", 0.2, 2) == held[:2]
    other = StreamingTokenBatches(root / "parts", tok, 4, 64, seed=4, holdout=0.2)
    assert _texts(tok, other.batch(0)) != _texts(tok, first[0])  # the seed orders the rows


def test_packed_windows_jsonl_and_arrow(corpus, tmp_path):
    root, _, tok = corpus
    stream = StreamingTokenBatches(root / "c.jsonl", tok, 2, 16, pack=True)
    assert stream.rows == 90
    for step in range(5):
        batch = stream.batch(step)
        assert tuple(batch["input_ids"].shape) == (2, 16) and bool(batch["attention_mask"].all())
    datasets.Dataset.from_dict({"text": TEXTS[:30]}).save_to_disk(str(tmp_path / "saved"))
    arrow = StreamingTokenBatches(next((tmp_path / "saved").glob("*.arrow")), tok, 3, 64)
    assert arrow.rows == 30 and len(arrow) == 10
    assert sorted(_texts(tok, b)[i] for b in [arrow.batch(s) for s in range(10)] for i in range(3)) == sorted(TEXTS[:30])


def test_buffered_shuffle_is_a_seeded_permutation():
    out = list(shuffled(range(100), 10, random.Random(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert out == list(shuffled(range(100), 10, random.Random(0)))
    assert all(x <= i + 10 for i, x in enumerate(out))  # the buffer bounds how far ahead a row is read


def test_bad_streams_are_one_line(corpus, tmp_path):
    root, _, tok = corpus
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ValueError, match="--stream reads .parquet, .arrow, .jsonl files"):
        StreamingTokenBatches(tmp_path / "a.txt", tok, 2, 16)
    (tmp_path / "n.jsonl").write_text(json.dumps({"caption": "x"}) + "\n")
    with pytest.raises(ValueError, match='rows with a "text" field'):
        StreamingTokenBatches(tmp_path / "n.jsonl", tok, 2, 16).batch(0)


def test_phm_train_streams(corpus, tmp_path):
    """phm-train --stream on a folder of parquet files: trains the steps asked for, evaluates the
    held-out rows, records stream in its recipe; with --epochs or without files it says why in one line."""
    root, model, _ = corpus
    common = [model, "--data", root / "parts", "--stream", "--batch-size", 4, "--max-length", 32, "--init",
              "projection"]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(a) for a in [*common, "--out", out, "--steps", 4, "--log-every", 1,
                                                        "--holdout", 0.2, "--eval-every", 2]])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log if h["stage"] != "eval"] == [1, 2, 3, 4]
    assert [h["step"] for h in log if h["stage"] == "eval"] == [0, 2, 4]
    assert "stream: true" in (out / "recipe.yaml").read_text()
    bad = CliRunner().invoke(main, [str(a) for a in [*common, "--out", tmp_path / "bad", "--epochs", 1]])
    assert bad.exit_code == 1 and "with --stream give --steps" in bad.output and not (tmp_path / "bad").exists()
    bad = CliRunner().invoke(main, [str(model), "--data", "chatterbot", "--stream", "--out", str(tmp_path / "b2")])
    assert bad.exit_code == 1 and "--stream reads data files" in bad.output
