"""Synthetic data: procedural 3DGS scenes (and, later, trajectories and bags)."""

from gsvisloc_ros.synthetic.scenes import SCENE_KINDS, make_scene
from gsvisloc_ros.synthetic.trajectories import (
    DEFAULT_MAP_NAME,
    TRAJECTORY_KINDS,
    OdometryNoise,
    Rig,
    Trajectory,
    default_map,
    make_trajectory,
    map_extent,
)

__all__ = [
    "DEFAULT_MAP_NAME",
    "SCENE_KINDS",
    "TRAJECTORY_KINDS",
    "OdometryNoise",
    "Rig",
    "Trajectory",
    "default_map",
    "make_scene",
    "make_trajectory",
    "map_extent",
]
