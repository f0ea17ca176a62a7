from mmjax.data.builders.edu_tracing.edu_tracing import EduTracing

__all__ = ["EduTracing"]
