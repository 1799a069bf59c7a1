"""Shared pytest fixtures.

* ``shared_data``: the path of ``../shared/data`` beside the repository; tests using it skip with
  a reason when it is absent (the product itself never reads ``../shared``).
* ROS isolation: every test process keeps DDS on this machine and gets its own domain id, so
  parallel runs never see each other and no discovery traffic leaves the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gsvisloc_ros.ros import local_environment

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

local_environment(force=True)  # before any test imports rclpy: DDS discovery stays on localhost
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present beside a development checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def plant_ply(shared_data: Path) -> Path:
    path = shared_data / "splats" / "plant.ply"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def tarot_ply(shared_data: Path) -> Path:
    path = shared_data / "splats" / "tarot_cards.ply"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture
def ros_context():
    """A fresh rclpy context, shut down after the test (one per test keeps DDS participants apart)."""
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture
def harness_factory():
    """Makes :class:`ros_harness.Harness` objects (the node under test and a peer), closed after the test."""
    pytest.importorskip("rclpy")
    pytest.importorskip("tf2_msgs")
    from ros_harness import Harness

    made = []

    def make(overrides=None, **kwargs):
        made.append(Harness(overrides, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()
