"""The managed ``gsvisloc`` node: the same node, brought up by a lifecycle manager.

Console script ``gsvisloc_lifecycle_node`` (node name ``gsvisloc``, the parameters of
:mod:`gsvisloc_ros.ros.params`, the interfaces of :mod:`gsvisloc_ros.ros.node`), with the standard
``~/change_state``, ``~/get_state``, ``~/get_available_transitions`` services of a ROS 2 managed
node (what nav2's ``lifecycle_manager`` drives). The transitions:

* configure: parameters read; publishers, services and TF made; the map is loaded and encoded in
  the background (configure returns at once; ``/diagnostics`` says "loading", then "ready" or why
  it failed);
* activate: camera, camera_info and ``/initialpose`` subscriptions live; poses, TF, path, map
  cloud and ``~/status`` published;
* deactivate: subscriptions gone and nothing about the localization published (``/diagnostics``
  goes on); the map, the calibration and the tracks are kept, so activate resumes at once;
* cleanup: everything made by configure destroyed, the map released (back to unconfigured);
* shutdown: as cleanup, from any state (finalized).

Everything else is :class:`~gsvisloc_ros.ros.node.GsvislocCore`, shared with the plain node.
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from gsvisloc_ros.ros.node import GsvislocCore, spin


class GsvislocLifecycleNode(GsvislocCore, LifecycleNode):
    """The managed variant of :class:`~gsvisloc_ros.ros.node.GsvislocNode` (same arguments)."""

    def __init__(self, node_name: str = "gsvisloc", *, localizer=None, gaussian_map=None, localizer_config=None,
                 **kwargs) -> None:
        LifecycleNode.__init__(self, node_name, **kwargs)
        self._init_core(localizer, gaussian_map, localizer_config)

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - reported to the manager as a failed transition
            self.get_logger().error(f"configure failed: {exc}")
            self._close()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._enable()
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._disable()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._close()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._close()
        return TransitionCallbackReturn.SUCCESS


def main(args: list[str] | None = None) -> int:
    """Console script ``gsvisloc_lifecycle_node``: unconfigured until a lifecycle manager configures it."""
    return spin(GsvislocLifecycleNode, args, "gsvisloc_lifecycle_node")


if __name__ == "__main__":
    sys.exit(main())
