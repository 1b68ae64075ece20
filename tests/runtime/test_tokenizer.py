"""phm-run's tokenizer (runtime/tokenizer.py: the `tokenizers` core, no transformers import) gives
transformers' own ids and text for every tokenizer the project ships or builds."""

from __future__ import annotations

import sys

import pytest
from tinytok import word_tokenizer

from phm.runtime.tokenizer import RuntimeTokenizer, TokenizerError, load_tokenizer

TEXTS = ["The capital of France is Paris.", "  two  spaces, a comma , and isn't it?  ", "w5 w17 w200 w3",
         "unicode: café, naïve — 東京 🙂", "", "line one\nline two\t tab"]


def _dirs(tmp_path):
    from phm.trainer.models import minilm_dir, smollm2_dir
    from tinymodels import save_char_tokenizer

    char = tmp_path / "char"
    char.mkdir()
    save_char_tokenizer(char)
    word = tmp_path / "word"
    word_tokenizer({5: "<extra>"}).save_pretrained(word)
    return {"smollm2": smollm2_dir(), "minilm": minilm_dir(), "char": char, "word": word}


@pytest.mark.parametrize("name", ["smollm2", "minilm", "char", "word"])
def test_ids_and_text_equal_transformers(name, tmp_path):
    from transformers import AutoTokenizer

    hf_dir = _dirs(tmp_path)[name]
    ours, theirs = load_tokenizer(hf_dir), AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    assert isinstance(ours, RuntimeTokenizer)
    assert (ours.eos_token_id, ours.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == theirs(text, add_special_tokens=special)["input_ids"], (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


def test_chat_template_renders_as_transformers_does(tmp_path):
    from transformers import AutoTokenizer

    hf_dir = _dirs(tmp_path)["smollm2"]
    ours, theirs = load_tokenizer(hf_dir), AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    messages = [{"role": "user", "content": "What is PHM?"}]
    assert ours.chat_template
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                                            tokenize=False)


def test_loading_does_not_import_transformers(tmp_path):
    import subprocess

    hf_dir = _dirs(tmp_path)["smollm2"]
    code = ("import sys; from phm.runtime.tokenizer import load_tokenizer; t = load_tokenizer(sys.argv[1]); "
            "t.decode(t.encode('hello')); sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code, str(hf_dir)]).returncode == 0


def test_no_tokenizer_is_one_line(tmp_path):
    with pytest.raises(TokenizerError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json cannot be read"):
        load_tokenizer(tmp_path)
