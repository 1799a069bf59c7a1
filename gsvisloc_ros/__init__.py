"""gsvisloc_ros: visual relocalization of a camera against a 3D Gaussian Splatting map."""

__version__ = "0.1.0"
