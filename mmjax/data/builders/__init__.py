"""Registry of mmjax's tfds builders, by the name configs use in `config.data.name`."""

from mmjax.data.builders.easy_vqa import EasyVqa
from mmjax.data.builders.edu_behaviour import EduBehaviour
from mmjax.data.builders.edu_grading import EduGrading
from mmjax.data.builders.edu_questions import EduQuestions
from mmjax.data.builders.edu_scenes import EduScenes
from mmjax.data.builders.edu_tracing import EduTracing
from mmjax.data.builders.jsonl import Jsonl
from mmjax.data.builders.scienceqa import ScienceQa
from mmjax.data.builders.shapes_relational import ShapesRelational
from mmjax.data.builders.video_motion import VideoMotion

BUILDERS = {
    "easy_vqa": EasyVqa,
    "edu_behaviour": EduBehaviour,
    "edu_grading": EduGrading,
    "edu_questions": EduQuestions,
    "edu_scenes": EduScenes,
    "edu_tracing": EduTracing,
    "jsonl": Jsonl,
    "scienceqa": ScienceQa,
    "shapes_relational": ShapesRelational,
    "video_motion": VideoMotion,
}
