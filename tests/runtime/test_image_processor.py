"""runtime.vlm.image_processor: where an artifacts dir's image processor config can live."""

import json

import pytest

from phm.runtime.vlm import image_processor


def test_processor_config_json_of_a_transformers5_processor(tmp_path):
    # transformers 5 processors (LlavaProcessor …) save the image processor nested in
    # processor_config.json and write no preprocessor_config.json: the real VLM sample's case
    from transformers import BitImageProcessor

    nested = BitImageProcessor(size={"height": 70, "width": 70}, do_center_crop=False).to_dict()
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": nested,
                                                                "processor_class": "LlavaProcessor"}))
    proc = image_processor(tmp_path)
    assert (proc.size["height"], proc.size["width"]) == (70, 70) and not proc.do_center_crop


def test_no_image_processor_is_one_clear_error(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaProcessor"}))
    with pytest.raises(ValueError, match="holds no image processor"):
        image_processor(tmp_path)
