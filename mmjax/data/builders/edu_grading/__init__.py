from mmjax.data.builders.edu_grading.edu_grading import TOKENIZER_FILE, EduGrading

__all__ = ["EduGrading", "TOKENIZER_FILE"]
