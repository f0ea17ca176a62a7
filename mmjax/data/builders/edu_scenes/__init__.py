from mmjax.data.builders.edu_scenes.edu_scenes import EduScenes

__all__ = ["EduScenes"]
