from mmjax.data.builders.easy_vqa.easy_vqa import EasyVqa

__all__ = ["EasyVqa"]
