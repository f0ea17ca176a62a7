from mmjax.data.builders.scienceqa.scienceqa import ScienceQa

__all__ = ["ScienceQa"]
