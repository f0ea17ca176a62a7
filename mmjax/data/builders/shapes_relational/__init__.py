from mmjax.data.builders.shapes_relational.shapes_relational import ShapesRelational

__all__ = ["ShapesRelational"]
