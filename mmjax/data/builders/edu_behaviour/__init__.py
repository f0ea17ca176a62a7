from mmjax.data.builders.edu_behaviour.edu_behaviour import EduBehaviour

__all__ = ["EduBehaviour"]
