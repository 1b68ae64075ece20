"""Data loaders: JSONL / TXT / image+caption folders, the chatterbot corpus, token batches,
teacher-sampled text."""

import json

import pytest
import torch

from phm.trainer.data import (Sample, TokenBatches, chatterbot_texts, read_samples, sample_teacher_texts,
                              split_holdout)
from tinymodels import tiny_model


def test_jsonl_txt_and_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "extra": 1}\n')
    (tmp_path / "b.txt").write_text("three\n  \nfour\n")
    assert [s.text for s in read_samples(tmp_path / "a.jsonl")] == ["one", "two"]
    assert [s.text for s in read_samples(tmp_path / "b.txt")] == ["three", "four"]
    assert [s.text for s in read_samples(tmp_path)] == ["one", "two", "three", "four"]


def test_image_caption_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, color in enumerate(["red", "blue"]):
        Image.new("RGB", (16, 12), color).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a {color} square\n")
    (folder / "more.jsonl").write_text(json.dumps({"text": "a red square again", "image": "img0.png"}) + "\n")
    samples = read_samples(folder)
    assert samples == [Sample("a red square", folder / "img0.png"), Sample("a blue square", folder / "img1.png"),
                       Sample("a red square again", (folder / "img0.png").resolve())]
    assert Image.open(samples[1].image).size == (16, 12)


@pytest.mark.parametrize("content,name,message", [
    ("{not json}\n", "d.jsonl", r"d\.jsonl:1: not valid JSON"),
    ('{"txt": "x"}\n', "d.jsonl", r"needs a \"text\" string"),
    ('{"text": "x", "image": "nope.png"}\n', "d.jsonl", "does not exist"),
    ("\n \n", "d.txt", "is empty"),
    ("x", "d.csv", "expected a folder"),
])
def test_bad_data_is_one_clear_error(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_samples(tmp_path / name)


def test_missing_data_and_image_without_caption(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="does not exist"):
        read_samples(tmp_path / "nothing.jsonl")
    Image.new("RGB", (4, 4)).save(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="has no caption file lonely.txt"):
        read_samples(tmp_path)


def test_chatterbot_corpus_and_holdout_split():
    texts = chatterbot_texts()
    assert len(texts) > 1500 and len(set(texts)) == len(texts)
    train, held = split_holdout(texts)
    assert not set(train) & set(held) and len(train) + len(held) == len(texts)
    assert 0.1 < len(held) / len(texts) < 0.2
    assert split_holdout(texts) == (train, held)  # stable


def test_token_batches_are_deterministic_and_cover_each_epoch():
    seqs = [[i + 1] * (1 + i % 5) for i in range(10)]
    data = TokenBatches(seqs, batch_size=3, pad_id=0, seed=7)
    assert len(data) == 3
    b = data.batch(4)
    assert torch.equal(b["input_ids"], TokenBatches(seqs, 3, 0, 7).batch(4)["input_ids"])
    assert b["input_ids"].shape[0] == 3 and (b["attention_mask"].sum(1) == (b["input_ids"] != 0).sum(1)).all()
    firsts = {int(data.batch(s)["input_ids"][r, 0]) for s in range(3) for r in range(3)}
    assert len(firsts) == 9  # one epoch: 9 distinct sequences, none twice
    with pytest.raises(ValueError, match="no non-empty"):
        TokenBatches([[]], 2)


def test_grouped_batches_cut_padding_and_still_visit_each_sequence_once_per_epoch():
    gen = torch.Generator().manual_seed(0)
    seqs = [[i + 1] * int(n) for i, n in enumerate(torch.randint(1, 40, (500,), generator=gen))]
    plain = TokenBatches(seqs, batch_size=8, seed=3)
    grouped = TokenBatches(seqs, batch_size=8, seed=3, group_by_length=True)

    def real_fraction(data):
        masks = [data.batch(s)["attention_mask"] for s in range(len(data))]
        return sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    assert real_fraction(plain) < 0.6 < 0.9 < real_fraction(grouped)
    for epoch in (0, 1):
        ids = [int(grouped.batch(epoch * len(grouped) + s)["input_ids"][r, 0]) for s in range(len(grouped))
               for r in range(8)]
        assert len(set(ids)) == len(ids) == len(grouped) * 8  # 62 full batches, no sequence twice
    first_lengths = [int(grouped.batch(s)["attention_mask"].sum(1).max()) for s in range(len(grouped))]
    assert sorted(first_lengths) != first_lengths  # the batch order is shuffled, not long-to-short
    # a pure function of (seed, step): a fresh instance, read from the middle, gives the same batch
    assert torch.equal(TokenBatches(seqs, 8, seed=3, group_by_length=True).batch(100)["input_ids"],
                       grouped.batch(100)["input_ids"])
    assert not torch.equal(grouped.batch(0)["input_ids"], grouped.batch(len(grouped))["input_ids"])  # new epoch


class _ByteTokenizer:
    """Minimal tokenizer for a 256-token tiny model (ids are bytes)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=True, **_):
        ids = list(text.encode("latin-1"))
        return {"input_ids": [self.bos_token_id] + ids if add_special_tokens else ids}

    def batch_decode(self, ids, skip_special_tokens=False):
        return [bytes(int(i) for i in row).decode("latin-1") for row in ids]


def test_teacher_sampled_texts_are_deterministic():
    model = tiny_model("llama")
    a = sample_teacher_texts(model, _ByteTokenizer(), num=3, max_new_tokens=5, seed=1, batch_size=2)
    b = sample_teacher_texts(model, _ByteTokenizer(), num=3, max_new_tokens=5, seed=1, batch_size=2)
    assert a == b and len(a) == 3 and all(len(t) == 6 for t in a)
    with pytest.raises(ValueError, match="language model head"):
        sample_teacher_texts(tiny_model("bert"), _ByteTokenizer(), num=1)


def test_long_stages_show_progress(capsys):
    """Teacher sampling and the calibrated init (activations, then the per-layer fit that dominates on
    large models) each draw a bar with their totals; progress=False draws none."""
    from phm.trainer import PHMConfig, calibrate_phm, inject_phm

    model = tiny_model("llama")
    sample_teacher_texts(model, _ByteTokenizer(), num=3, max_new_tokens=4, seed=1, batch_size=2, progress=True)
    inject_phm(model, PHMConfig(init="projection"))
    batches = [{"input_ids": torch.randint(3, 200, (2, 8))} for _ in range(2)]
    layers = calibrate_phm(model, iter(batches), progress=True, total=2)
    err = capsys.readouterr().err
    assert "teacher sampling" in err and "12/12" in err  # 3 texts × 4 tokens
    assert "calibration: activations" in err and "2/2" in err
    assert "calibration: fitting cores" in err and f"{layers}/{layers}" in err
    calibrate_phm(model, iter(batches))
    assert "calibration" not in capsys.readouterr().err


def test_packed_batches_are_full_windows_of_the_joined_stream():
    texts = ["abc", "defgh", "ij"]
    data = TokenBatches.packed(_ByteTokenizer(), texts, batch_size=2, length=4)
    stream = list(b"abc\ndefgh\nij")  # joined by newlines, no special tokens
    assert data.sequences == [stream[0:4], stream[4:8], stream[8:12]]  # 12 ids: three full windows
    assert len(data) == 1 and data.batch(0)["attention_mask"].all()  # full windows: no padding
    tail = TokenBatches.packed(_ByteTokenizer(), ["abcde"], batch_size=1, length=2)
    assert tail.sequences == [list(b"ab"), list(b"cd")]  # a 1-token tail cannot train a next token: dropped
    with pytest.raises(ValueError, match="no texts"):
        TokenBatches.packed(_ByteTokenizer(), [], 2)
