"""Synthetic data: procedural 3DGS scenes (and, later, trajectories and bags)."""

from gsvisloc_ros.synthetic.scenes import SCENE_KINDS, make_scene

__all__ = ["SCENE_KINDS", "make_scene"]
