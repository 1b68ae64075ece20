"""Calibration data loading: default set, JSONL, TXT, image folders, clear errors."""

import pytest

from phm.export.calib_data import load_calibration_data


def test_default_set_ships_varied_prompts():
    samples = load_calibration_data()
    assert len(samples) == 48 and len({s.text for s in samples}) == 48
    assert all(s.image is None for s in samples)


def test_jsonl_txt_and_image_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n\n{"text": "with image", "image": "cat.png"}\n')
    (tmp_path / "b.txt").write_text("first\n\nsecond\n")
    (tmp_path / "cat.png").write_bytes(b"\x89PNG")
    (tmp_path / "cat.txt").write_text("a cat on a mat")
    samples = load_calibration_data(tmp_path)
    texts = [s.text for s in samples]
    assert texts == ["hello", "with image", "first", "second", "a cat on a mat"]
    assert samples[1].image == (tmp_path / "cat.png").resolve()
    assert len(load_calibration_data(tmp_path, limit=2)) == 2


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    (lambda p: (p / "x.jsonl").write_text("{bad\n") and p / "x.jsonl", "x.jsonl:1: not valid JSON"),
    (lambda p: (p / "y.jsonl").write_text('{"prompt": 1}\n') and p / "y.jsonl", "needs a \"text\" string"),
    (lambda p: (p / "z.jsonl").write_text('{"text": "t", "image": "no.png"}\n') and p / "z.jsonl", "does not exist"),
    (lambda p: (p / "w.csv").write_text("a,b") and p / "w.csv", "expected a folder, a .jsonl/.json/.txt/.parquet/.arrow file"),
])
def test_bad_calibration_data(tmp_path, setup, message):
    with pytest.raises(ValueError, match=message):
        load_calibration_data(setup(tmp_path))


def test_image_without_caption_is_an_image_only_sample_for_calibration_not_for_training(tmp_path):
    from phm.trainer.data import read_samples

    (tmp_path / "dog.png").write_bytes(b"\x89PNG")
    (sample,) = load_calibration_data(tmp_path)
    assert sample.text == "" and sample.image == tmp_path / "dog.png"
    with pytest.raises(ValueError, match="has no caption file dog.txt"):
        read_samples(tmp_path)


def test_heldout_report_text_is_the_trainers_held_out_split():
    """The INT8 report's text (windows for LMs, sentences for encoders) comes from the held-out split only."""
    from phm.export.int8 import heldout_sentences, heldout_windows
    from phm.trainer.data import chatterbot_texts, split_holdout

    train, held = split_holdout(chatterbot_texts())
    vocab = 256  # no tokenizer: UTF-8 bytes mod vocab, so the ids decode back to the text
    windows = heldout_windows(None, vocab, tokens=300, window=64)
    assert [w.shape[1] for w in windows] == [64] * 4 + [300 - 4 * 64]
    joined = bytes(int(i) for w in windows for i in w[0]).decode()
    assert joined == "\n".join(held)[:300]
    sentences = heldout_sentences(None, vocab, tokens=200, window=64)
    texts = [bytes(int(i) for i in s[0]).decode() for s in sentences]
    assert all(len(t) > 1 for t in texts) and set(texts) <= {h[:64] for h in held} and not set(texts) & set(train)
    assert sum(len(t) for t in texts) >= 200 > sum(len(t) for t in texts[:-1])
