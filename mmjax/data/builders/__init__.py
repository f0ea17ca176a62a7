"""Registry of mmjax's tfds builders, by the name configs use in `config.data.name`."""

from mmjax.data.builders.edu_grading import EduGrading

BUILDERS = {
    "edu_grading": EduGrading,
}
