"""launch/localize.launch.py and rviz/gsvisloc.rviz, checked without ROS's launch system.

``launch`` and ``launch_ros`` cannot be installed here, so :class:`FakeLaunchModule` stands in for
the few classes the launch file uses, recording what it is given. Injected into ``sys.modules``
only for the duration of a test. The RViz configuration is checked against the topics a real
node publishes and subscribes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "localize.launch.py"
RVIZ_FILE = REPO / "rviz" / "gsvisloc.rviz"
EXPECTED_ARGUMENTS = {"map", "params_file", "image_topic", "camera_info_topic", "namespace", "device", "use_rviz",
                      "log_level", "lifecycle", "autostart"}


class FakeLaunchModule:
    """A stand-in for the parts of ``launch`` / ``launch_ros`` the launch file uses (not the real API)."""

    class LaunchDescription:
        def __init__(self, entities=()):
            self.entities = list(entities)

    class DeclareLaunchArgument:
        def __init__(self, name, default_value=None, description=""):
            self.name, self.default_value, self.description = name, default_value, description

    class OpaqueFunction:
        def __init__(self, function, args=None, kwargs=None):
            self.function, self.args, self.kwargs = function, args or [], kwargs or {}

        def execute(self, context):
            return self.function(context, *self.args, **self.kwargs)

    class IfCondition:
        def __init__(self, predicate):
            self.predicate = predicate

    class LaunchConfiguration:
        def __init__(self, name, default=None):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    class PathJoinSubstitution:
        def __init__(self, parts):
            self.parts = parts

        def perform(self, context):
            return os.path.join(*(FakeLaunchModule.perform(p, context) for p in self.parts))

    class FindPackageShare:
        def __init__(self, package):
            self.package = package

        def perform(self, context):
            from ament_index_python.packages import get_package_share_directory

            return get_package_share_directory(self.package)

    class Node:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class Context:
        def __init__(self, configurations):
            self.launch_configurations = dict(configurations)

    @staticmethod
    def perform(value, context):
        return value if isinstance(value, str) else value.perform(context)

    @classmethod
    def modules(cls) -> dict[str, types.ModuleType]:
        def module(name, **members):
            m = types.ModuleType(name)
            m.__dict__.update(members)
            return m

        return {
            "launch": module("launch", LaunchDescription=cls.LaunchDescription),
            "launch.actions": module("launch.actions", DeclareLaunchArgument=cls.DeclareLaunchArgument,
                                     OpaqueFunction=cls.OpaqueFunction),
            "launch.conditions": module("launch.conditions", IfCondition=cls.IfCondition),
            "launch.substitutions": module("launch.substitutions", LaunchConfiguration=cls.LaunchConfiguration,
                                           PathJoinSubstitution=cls.PathJoinSubstitution),
            "launch_ros": module("launch_ros"),
            "launch_ros.actions": module("launch_ros.actions", Node=cls.Node),
            "launch_ros.substitutions": module("launch_ros.substitutions", FindPackageShare=cls.FindPackageShare),
        }


@pytest.fixture
def launch_description(monkeypatch):
    for name, module in FakeLaunchModule.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("localize_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _evaluate(description, **arguments):
    """The actions the launch file starts for the given launch arguments (the rest at their defaults)."""
    declared = [e for e in description.entities if isinstance(e, FakeLaunchModule.DeclareLaunchArgument)]
    context = FakeLaunchModule.Context({})
    for argument in declared:
        context.launch_configurations[argument.name] = FakeLaunchModule.perform(argument.default_value, context)
    context.launch_configurations.update(arguments)
    actions = []
    for entity in description.entities:
        if isinstance(entity, FakeLaunchModule.OpaqueFunction):
            actions += entity.execute(context)
    return actions


def test_launch_arguments(launch_description):
    declared = {e.name: e for e in launch_description.entities
                if isinstance(e, FakeLaunchModule.DeclareLaunchArgument)}
    assert set(declared) == EXPECTED_ARGUMENTS
    assert all(e.description for e in declared.values())
    assert declared["use_rviz"].default_value == "false" and declared["log_level"].default_value == "info"


def test_defaults_start_the_node_with_the_package_parameters(launch_description):
    [node] = _evaluate(launch_description)
    kwargs = node.kwargs
    assert (kwargs["package"], kwargs["executable"], kwargs["name"]) == ("gsvisloc_ros", "gsvisloc_node", "gsvisloc")
    [params_file] = kwargs["parameters"]  # nothing overrides the file unless asked
    assert Path(params_file).resolve() == (REPO / "config" / "gsvisloc.yaml").resolve()
    remaps = dict(kwargs["remappings"])
    assert remaps == {"image": "image", "image/compressed": "image/compressed", "camera_info": "camera_info"}
    assert kwargs["arguments"] == ["--ros-args", "--log-level", "info"] and kwargs["namespace"] == ""


def test_arguments_reach_the_node_and_rviz(launch_description):
    from gsvisloc_ros.ros.params import validate

    node, rviz = _evaluate(launch_description, map="/maps/room.ply", device="cpu", use_rviz="true",
                           namespace="robot1", image_topic="/cam/image_raw", camera_info_topic="/cam/camera_info",
                           params_file="/tmp/mine.yaml", log_level="debug")
    kwargs = node.kwargs
    assert kwargs["parameters"] == ["/tmp/mine.yaml", {"map_path": "/maps/room.ply", "device": "cpu"}]
    for name, value in kwargs["parameters"][1].items():
        assert validate(name, value) == ""
    assert dict(kwargs["remappings"]) == {"image": "/cam/image_raw", "image/compressed": "/cam/image_raw/compressed",
                                          "camera_info": "/cam/camera_info"}
    assert kwargs["namespace"] == "robot1" and kwargs["arguments"][-1] == "debug"
    assert (rviz.kwargs["package"], rviz.kwargs["executable"]) == ("rviz2", "rviz2")
    assert rviz.kwargs["namespace"] == "robot1" and ("image", "/cam/image_raw") in rviz.kwargs["remappings"]
    config = rviz.kwargs["arguments"][rviz.kwargs["arguments"].index("-d") + 1]
    assert Path(config).resolve() == RVIZ_FILE.resolve()


def test_lifecycle_selects_the_managed_node_and_autostart_its_manager(launch_description):
    [node] = _evaluate(launch_description, lifecycle="true")
    assert (node.kwargs["executable"], node.kwargs["name"]) == ("gsvisloc_lifecycle_node", "gsvisloc")
    assert _evaluate(launch_description, autostart="true")[0].kwargs["executable"] == "gsvisloc_node"  # no effect
    node, manager = _evaluate(launch_description, lifecycle="true", autostart="true", namespace="robot1")
    kwargs = manager.kwargs
    assert (kwargs["package"], kwargs["executable"]) == ("nav2_lifecycle_manager", "lifecycle_manager")
    [params] = kwargs["parameters"]
    assert params["node_names"] == [node.kwargs["name"]] and params["autostart"] is True
    assert kwargs["namespace"] == node.kwargs["namespace"] == "robot1"


def test_the_executables_are_the_console_scripts():
    setup = (REPO / "setup.py").read_text()
    assert re.search(r'"gsvisloc_node = gsvisloc_ros\.ros\.node:main"', setup)
    assert re.search(r'"gsvisloc_lifecycle_node = gsvisloc_ros\.ros\.lifecycle:main"', setup)
    from gsvisloc_ros.ros.node import main

    assert callable(main)
    pytest.importorskip("rclpy")
    from gsvisloc_ros.ros.lifecycle import main as lifecycle_main

    assert callable(lifecycle_main)


# ------------------------------------------------------------------------------ RViz


RVIZ_TYPES = {  # display class -> the message type it shows
    "rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2",
    "rviz_default_plugins/PoseWithCovariance": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "rviz_default_plugins/Pose": "geometry_msgs/msg/PoseStamped",
    "rviz_default_plugins/Path": "nav_msgs/msg/Path",
    "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
}


def _displays(displays):
    for display in displays:
        yield display
        yield from _displays(display.get("Displays", []))


def test_every_rviz_topic_is_one_the_node_publishes():
    rclpy = pytest.importorskip("rclpy")
    from gsvisloc_ros.ros.node import GsvislocNode

    config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    displays = list(_displays(manager["Displays"]))
    classes = {d["Class"] for d in displays}
    assert {"rviz_default_plugins/TF", "rviz_default_plugins/PointCloud2", "rviz_default_plugins/PoseWithCovariance",
            "rviz_default_plugins/Path", "rviz_default_plugins/Image"} <= classes

    context = rclpy.Context()
    rclpy.init(context=context)
    node = GsvislocNode(context=context)  # no map: publishers and subscriptions exist all the same
    try:
        published = dict(node.get_publisher_names_and_types_by_node("gsvisloc", "/"))
        subscribed = dict(node.get_subscriber_names_and_types_by_node("gsvisloc", "/"))
        qos = {topic: node.get_publishers_info_by_topic(topic)[0].qos_profile for topic in published}
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)

    shown = set()
    for display in displays:
        if "Topic" not in display:
            continue
        value = display["Topic"]["Value"]
        topic = value if value.startswith("/") else "/" + value  # RViz runs in the node's namespace
        expected_type = RVIZ_TYPES[display["Class"]]
        if topic == "/image":  # the camera image: the node's input, remapped for RViz as for the node
            assert expected_type in subscribed[topic]
            continue
        assert topic in published, f"RViz shows {topic}, which the node does not publish"
        assert expected_type in published[topic]
        node_durability = qos[topic].durability.name.lower().replace("_", " ")
        assert display["Topic"]["Durability Policy"].lower() == node_durability or \
            display["Topic"]["Durability Policy"] == "Volatile", f"{topic}: RViz would not match the QoS"
        shown.add(topic)
    assert {"/gsvisloc/map_cloud", "/gsvisloc/pose_with_covariance", "/gsvisloc/path", "/gsvisloc/rendered"} <= shown
    tools = {t["Class"]: t for t in manager["Tools"]}
    assert "/initialpose" in subscribed and tools["rviz_default_plugins/SetInitialPose"]["Topic"]["Value"] == \
        "/initialpose"
