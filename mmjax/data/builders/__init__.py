"""Registry of mmjax's tfds builders, by the name configs use in `config.data.name`."""

from mmjax.data.builders.edu_grading import EduGrading
from mmjax.data.builders.edu_scenes import EduScenes

BUILDERS = {
    "edu_grading": EduGrading,
    "edu_scenes": EduScenes,
}
