from mmjax.data.builders.edu_questions.edu_questions import EduQuestions

__all__ = ["EduQuestions"]
