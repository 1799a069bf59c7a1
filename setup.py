"""ament_python build of gsvisloc_ros (colcon on a ROS install, pip in a virtual environment)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "gsvisloc_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["learned/weights/*.pt", "learned/weights/*.json"]},  # the learned matcher's weights
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="gsvisloc_ros maintainers",
    maintainer_email="gsvisloc@example.org",
    description="Visual relocalization against 3D Gaussian Splatting maps (GSVisLoc) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "gsvisloc = gsvisloc_ros.cli:main",
            "gsvisloc_node = gsvisloc_ros.ros.node:main",
            "gsvisloc_lifecycle_node = gsvisloc_ros.ros.lifecycle:main",
        ],
    },
)
