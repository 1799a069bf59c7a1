"""Node parameters (gsvisloc_ros/ros/params.py): declared once, validated, and equal to config/gsvisloc.yaml."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from gsvisloc_ros.ros import params as P  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config" / "gsvisloc.yaml"


def test_every_default_is_valid_and_names_are_unique():
    assert len(P.BY_NAME) == len(P.PARAMETERS)
    for spec in P.PARAMETERS:
        assert P.validate(spec.name, spec.default) == "", spec.name
        assert spec.description
    assert set(P.defaults()) == {f.name for f in dataclasses.fields(P.NodeParams)}
    assert P.NodeParams() == P.NodeParams().updated(P.defaults())


@pytest.mark.parametrize("name,value,why", [
    ("mode", "fast", "mode must be one of continuous, on_demand"),
    ("device", "tpu", "device must be one of auto, cpu, cuda"),
    ("max_rate", -1.0, r"max_rate must be in \[0, 1000\]"),
    ("max_rate", float("nan"), "finite"),
    ("min_inlier_ratio", 1.5, "min_inlier_ratio must be in"),
    ("min_inliers", 2, "min_inliers must be in"),
    ("jump_confirmations", 0, "jump_confirmations must be in"),
    ("covariance_scale", 0.0, "covariance_scale must be in"),
    ("map_cloud_max_points", -5, "map_cloud_max_points must be in"),
    ("publish_tf", "yes", "publish_tf must be a bool"),
    ("map_to_frame", [0.0] * 6, "7 values"),
    ("map_to_frame", [0.0] * 7, "quaternion"),
    ("map_to_frame", [0.0, 0, 0, 0, 0, 0, 1, -2.0], "scale"),
    ("map_to_frame", "0 0 0 0 0 0 1", "list of 7 or 8 numbers"),
    ("nonsense", 1, "unknown parameter"),
])
def test_invalid_values_are_refused_with_a_clear_message(name, value, why):
    problem = P.validate(name, value)
    assert problem and re.search(why, problem), problem


def test_map_to_frame_is_a_similarity():
    T = P.map_to_frame_matrix([1.0, 2.0, 3.0, 0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4), 2.0])
    np.testing.assert_allclose(T @ [1.0, 0.0, 0.0, 1.0], [1.0, 4.0, 3.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(P.map_to_frame_matrix(P.IDENTITY_MAP_TO_FRAME), np.eye(4))


def test_config_file_lists_exactly_the_declared_parameters_with_their_defaults():
    config = yaml.safe_load(CONFIG.read_text())
    values = config["/**"]["ros__parameters"]
    assert list(values) == [spec.name for spec in P.PARAMETERS]
    for spec in P.PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
        assert type(values[spec.name]) is type(spec.default), f"{spec.name}: the YAML type would not be accepted"


def _node(context, overrides=(), changes=None):
    node = rclpy.create_node("params_check", context=context, parameter_overrides=list(overrides))
    return node, P.declare(node, on_change=(changes.append if changes is not None else None))


def test_declared_with_descriptors_ranges_and_descriptions(ros_context):
    node, values = _node(ros_context)
    try:
        assert values == P.NodeParams()
        for spec in P.PARAMETERS:
            descriptor = node.describe_parameter(spec.name)
            assert descriptor.description.startswith(spec.description)
            if spec.low is not None:
                limits = descriptor.integer_range or descriptor.floating_point_range
                assert (limits[0].from_value, limits[0].to_value) == (spec.low, spec.high)
            if spec.choices:
                assert all(c in descriptor.additional_constraints for c in spec.choices)
    finally:
        node.destroy_node()


def test_invalid_overrides_stop_the_declaration_with_the_reason(ros_context):
    with pytest.raises(InvalidParameterValueException, match="mode must be one of"):
        _node(ros_context, [Parameter("mode", value="sometimes")])
    with pytest.raises(InvalidParameterValueException, match="map_to_frame"):
        _node(ros_context, [Parameter("map_to_frame", value=[1.0, 2.0])])


def test_run_time_changes_are_validated_then_reported(ros_context):
    changes = []
    node, values = _node(ros_context, [Parameter("max_rate", value=2.5)], changes)
    try:
        assert values.max_rate == 2.5 and changes == []
        [result] = node.set_parameters([Parameter("min_inlier_ratio", value=3.0)])
        # rclpy's range check (from the descriptor) or ours: either names the parameter and its limits
        assert not result.successful and "min_inlier_ratio" in result.reason and "1.0" in result.reason
        [result] = node.set_parameters([Parameter("mode", value="sometimes")])
        assert not result.successful and "mode must be one of continuous, on_demand" in result.reason
        assert changes == []
        [result] = node.set_parameters([Parameter("mode", value="on_demand")])
        assert result.successful and changes == [{"mode": "on_demand"}]
        assert node.get_parameter("mode").value == "on_demand"
    finally:
        node.destroy_node()
