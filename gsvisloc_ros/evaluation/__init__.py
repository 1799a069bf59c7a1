"""Evaluation: pose-error metrics (:mod:`.metrics`) and query sets made from a map alone (:mod:`.queries`).

Only the metrics are imported here (pure numpy); ``queries`` renders and is imported on demand.
"""

from gsvisloc_ros.evaluation.metrics import (
    ABSOLUTE_THRESHOLDS,
    RELATIVE_THRESHOLDS,
    ErrorScale,
    as_error_scale,
    error_cdf,
    pose_error,
    rotation_error_deg,
    scene_scale,
    summarise,
    threshold_key,
    translation_error,
)

__all__ = [
    "ABSOLUTE_THRESHOLDS",
    "RELATIVE_THRESHOLDS",
    "ErrorScale",
    "as_error_scale",
    "error_cdf",
    "pose_error",
    "rotation_error_deg",
    "scene_scale",
    "summarise",
    "threshold_key",
    "translation_error",
]
