"""The ROS 2 layer: a thin shell around :class:`~gsvisloc_ros.localizer.Localizer`.

* :mod:`.messages`: conversions between ROS messages and numpy (images, camera models, poses,
  covariances, point clouds). Needs the message packages, not rclpy.
* :mod:`.tf`: ``tf2_ros`` when it imports, else the package's own buffer/listener/broadcasters
  behind the same interface.
* :mod:`.params`: every node parameter declared once (default, range, description) and validated.
* :mod:`.node`: the ``gsvisloc`` node (console script ``gsvisloc_node``).

The localization core never imports anything from here.
"""
