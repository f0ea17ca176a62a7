from mmjax.data.builders.edu_grading.edu_grading import EduGrading

__all__ = ["EduGrading"]
