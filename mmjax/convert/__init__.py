"""Import pretrained HF safetensors weights (BERT-family, ViT, CLIP towers) into mmjax.

    params, report = load_pretrained(params, "/ckpt/bert", "bert", prefix="text_encoder")
    print(report)

Command line: `python -m mmjax.convert --checkpoint DIR --kind bert|vit|clip_text|clip_vision`
builds the matching tower from DIR/config.json and prints the report.
"""

from mmjax.convert.hf_config import example_inputs, param_shapes, tower_from_hf_config
from mmjax.convert.hf_flax import hf_flax_to_state_dict
from mmjax.convert.load import (
    convert_state_dict,
    load_pretrained,
    load_state_dict,
    read_safetensors,
)
from mmjax.convert.names import KINDS
from mmjax.convert.report import ConversionReport

__all__ = ["KINDS", "ConversionReport", "convert_state_dict", "example_inputs",
           "hf_flax_to_state_dict", "load_pretrained", "load_state_dict", "param_shapes",
           "read_safetensors", "tower_from_hf_config"]
