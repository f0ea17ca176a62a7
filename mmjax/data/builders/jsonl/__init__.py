from mmjax.data.builders.jsonl.jsonl import Jsonl, JsonlConfig

__all__ = ["Jsonl", "JsonlConfig"]
