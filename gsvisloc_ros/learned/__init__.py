"""The paper's learned scene encoder and matcher (GSVisLoc), trained here, beside the lifted one.

Modules, in the order data flows:

* :mod:`.config`: :class:`LearnedConfig`, the architecture and hierarchy (saved with the weights).
* :mod:`.gaussian_encoder`: the KPConv-style point network over the Gaussians -> coarse regions.
* :mod:`.image_head`: a trainable head on the frozen XFeat backbone's 1/8 map -> image patches.
* :mod:`.attention`: interleaved self/cross linear attention between regions and patches.
* :mod:`.matching`: dual-softmax scores, mutual matches, sub-patch positions, loss, recall.
* :mod:`.model`: the whole matcher and its weights file (``weights_only`` loading).
* :mod:`.scene`: a map's learned encoding (regions + descriptors), cached.
* :mod:`.coarse`: a query -> 2D-3D matches -> coarse PnP hypotheses, for the localizer.
* :mod:`.data`, :mod:`.train`: training data from renders and the training loop.

The localizer uses it with ``LocalizerConfig(scene_encoder="learned")``; its refinement and
acceptance stay the same as with the lifted encoder.
"""

from .config import LearnedConfig

SCENE_ENCODERS = ("lifted", "learned")

__all__ = ["SCENE_ENCODERS", "LearnedConfig"]
