"""Data layouts people already have (sources.py): LLaVA conversation JSONL/JSON, Flickr8k folders,
Hugging Face `datasets` parquet/arrow files; bad files are one clear ValueError."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from phm.trainer.data import read_samples


def _images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)


def _llava(image="a.jpg"):
    return {"image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A dog."},
        {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Brown."}]}


def test_llava_conversations_jsonl_and_json(tmp_path):
    _images(tmp_path, "a.jpg")
    text_chat = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(_llava()) + "\n" + json.dumps(text_chat) + "\n")
    first, second = read_samples(tmp_path / "chat.jsonl")
    assert (first.prompt, first.text, first.image.name) == ("What is in the picture?", "A dog.", "a.jpg")
    assert first.turns == (("user", "What colour?"), ("assistant", "Brown."))
    assert (second.text, second.image) == ("Hi\nHello!", None)
    (tmp_path / "llava.json").write_text(json.dumps([_llava(), _llava()]))
    assert [s.text for s in read_samples(tmp_path / "llava.json")] == ["A dog.", "A dog."]


def test_flickr8k_kaggle_and_token_layouts(tmp_path):
    kaggle = tmp_path / "kaggle"
    _images(kaggle / "Images", "1.jpg", "2.jpg")
    (kaggle / "captions.txt").write_text('image,caption\n1.jpg,A child climbs.\n1.jpg,"A girl, smiling."\n'
                                         "2.jpg,A dog runs.\n")
    samples = read_samples(kaggle)
    assert [(s.image.name, s.text) for s in samples] == [("1.jpg", "A child climbs."), ("1.jpg", "A girl, smiling."),
                                                         ("2.jpg", "A dog runs.")]
    token = tmp_path / "token"
    _images(token / "Flicker8k_Dataset", "3.jpg")
    (token / "Flickr8k.token.txt").write_text("3.jpg#0\tA man sits .\n3.jpg#1\tSomeone resting .\n")
    assert [s.text for s in read_samples(token)] == ["A man sits .", "Someone resting ."]


@pytest.mark.parametrize("write,message", [
    (lambda d: (d / "captions.txt").write_text("file,text\n1.jpg,x\n"), 'expected the header "image,caption"'),
    (lambda d: (d / "captions.txt").write_text("image,caption\nmissing.jpg,x\n"), "does not exist"),
    (lambda d: (d / "c.jsonl").write_text(json.dumps({"conversations": [{"from": "gpt", "value": "x"}]}) + "\n"),
     "at least a question and an answer"),
    (lambda d: (d / "c.jsonl").write_text(json.dumps({"image": "no.jpg", "conversations": _llava()["conversations"]})
                                          + "\n"), "does not exist"),
])
def test_bad_layouts_are_one_line(tmp_path, write, message):
    write(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_samples(tmp_path)


def test_hf_datasets_parquet_and_arrow(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    datasets.Dataset.from_dict({"text": ["one line", "two lines", ""]}).to_parquet(str(tmp_path / "t.parquet"))
    assert [s.text for s in read_samples(tmp_path / "t.parquet")] == ["one line", "two lines"]
    _images(tmp_path / "conv", "a.jpg")
    datasets.Dataset.from_list([_llava()]).to_parquet(str(tmp_path / "conv" / "part-0.parquet"))
    (sample,) = read_samples(tmp_path / "conv")  # a folder of parquet files
    assert (sample.prompt, sample.text, sample.image.name) == ("What is in the picture?", "A dog.", "a.jpg")
    saved = tmp_path / "arrow"
    datasets.Dataset.from_dict({"text": ["from arrow"]}).save_to_disk(str(saved))
    arrow = next(saved.glob("*.arrow"))
    assert [s.text for s in read_samples(arrow)] == ["from arrow"]
    datasets.Dataset.from_dict({"caption": ["x"]}).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match='needs a "text"'):
        read_samples(tmp_path / "bad.parquet")
