"""Launch the gsvisloc node (and optionally RViz).

    ros2 launch gsvisloc_ros localize.launch.py map:=/path/to/scene.ply \
        image_topic:=/camera/image_raw camera_info_topic:=/camera/camera_info use_rviz:=true

Arguments:
    map                a 3DGS map (.ply / .splat); empty: the params file's map_path
    params_file        node parameters (default: the package's config/gsvisloc.yaml)
    image_topic        the camera image (its /compressed sibling when use_compressed is set)
    camera_info_topic  the camera's CameraInfo
    namespace          namespace of the node (and of RViz, whose config uses relative names)
    device             auto, cpu or cuda; empty: the params file's device
    use_rviz           start RViz with the package's rviz/gsvisloc.rviz
    log_level          debug, info, warn, error or fatal
    lifecycle          true: the managed node (gsvisloc_lifecycle_node), which waits unconfigured for a
                       lifecycle manager
    autostart          with lifecycle:=true, also start nav2's lifecycle_manager to configure and activate
                       it (needs nav2_lifecycle_manager; bond off, as the node has no bond)
"""
# ruff: noqa: I001 - the repository's launch/ folder makes ruff take the ROS `launch` package for first-party

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "gsvisloc_ros"

ARGUMENTS = [
    ("map", "", "3DGS map file (.ply or .splat); empty: map_path from params_file"),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "gsvisloc.yaml"]),
     "YAML file with the node's parameters"),
    ("image_topic", "image", "camera image topic (sensor_msgs/Image)"),
    ("camera_info_topic", "camera_info", "camera calibration topic (sensor_msgs/CameraInfo)"),
    ("namespace", "", "namespace of the node and RViz"),
    ("device", "", "torch device: auto, cpu or cuda; empty: device from params_file"),
    ("use_rviz", "false", "start RViz with the package's configuration"),
    ("log_level", "info", "log level of the node: debug, info, warn, error, fatal"),
    ("lifecycle", "false", "true: run the managed (lifecycle) node, configured and activated by a lifecycle manager"),
    ("autostart", "false", "with lifecycle: start nav2_lifecycle_manager to configure and activate the node"),
]

TRUE = ("true", "1", "yes", "on")


def launch_setup(context, *args, **kwargs):
    """The node (and RViz) from the evaluated arguments: map and device override the params file only when given."""
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    overrides = {}
    if value["map"]:
        overrides["map_path"] = value["map"]
    if value["device"]:
        overrides["device"] = value["device"]
    image = value["image_topic"]
    remappings = [("image", image), ("image/compressed", image.rstrip("/") + "/compressed"),
                  ("camera_info", value["camera_info_topic"])]
    lifecycle = value["lifecycle"].lower() in TRUE
    actions = [
        Node(
            package=PACKAGE,
            executable="gsvisloc_lifecycle_node" if lifecycle else "gsvisloc_node",
            name="gsvisloc",
            namespace=value["namespace"],
            output="screen",
            parameters=[value["params_file"]] + ([overrides] if overrides else []),
            remappings=remappings,
            arguments=["--ros-args", "--log-level", value["log_level"]],
        )
    ]
    if lifecycle and value["autostart"].lower() in TRUE:
        actions.append(Node(
            package="nav2_lifecycle_manager",
            executable="lifecycle_manager",
            name="lifecycle_manager_localization",
            namespace=value["namespace"],
            output="screen",
            parameters=[{"autostart": True, "node_names": ["gsvisloc"], "bond_timeout": 0.0}],
        ))
    if value["use_rviz"].lower() in TRUE:
        rviz_config = PathJoinSubstitution([FindPackageShare(PACKAGE), "rviz", "gsvisloc.rviz"]).perform(context)
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            namespace=value["namespace"],
            output="screen",
            arguments=["-d", rviz_config],
            remappings=[("image", image)],
        ))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=launch_setup)]
    )
