"""The ROS 2 layer: a thin shell around :class:`~gsvisloc_ros.localizer.Localizer`.

* :mod:`.messages`: conversions between ROS messages and numpy (images, camera models, poses,
  covariances, point clouds). Decoding needs no ROS package; building messages needs the
  message packages, not rclpy.
* :mod:`.compat`: stand-ins for the ROS packages that cannot be installed everywhere (``tf2_ros``:
  buffer, listener, broadcasters), used when the real one does not import.
* :mod:`.params`: every node parameter declared once (default, range, description) and validated.
* :mod:`.node`: the ``gsvisloc`` node (console script ``gsvisloc_node``).

The localization core never imports anything from here.
"""

import os
import sys


def local_environment(force: bool = False) -> None:
    """Keep DDS on this machine and give ament_index a prefix, for processes that start rclpy
    here (tests, bag replay, benchmarks); call it before rclpy is imported.

    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and ``ROS_LOCALHOST_ONLY=1``, unless already set
    (``force``: set them anyway); ``AMENT_PREFIX_PATH``: the virtual environment's prefix, where
    the ROS wheels install, when unset.
    """
    for name, value in (("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"), ("ROS_LOCALHOST_ONLY", "1")):
        if force:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    if not os.environ.get("AMENT_PREFIX_PATH") and sys.prefix != sys.base_prefix:
        os.environ["AMENT_PREFIX_PATH"] = sys.prefix
