from mmjax.data.builders.video_motion.video_motion import VideoMotion

__all__ = ["VideoMotion"]
