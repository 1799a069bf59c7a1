"""Tracking: which prior each frame of a stream is localized from, and which accepted poses are trusted.

A camera stream is localized frame by frame with :meth:`Tracker.localize`. Within
``track_timeout`` seconds (image stamps) of the last trusted pose of the same camera frame, that
pose is the frame's prior (moved by odometry when the caller gives ``T_odom_camera`` for both
frames): the localizer's tracking mode, about twice as fast as a global search. A pose the
localizer accepted is trusted only when the :class:`JumpGate` lets it through.

ROS-free: the node (:mod:`gsvisloc_ros.ros.node`), bag replay straight into the localizer
(:mod:`gsvisloc_ros.evaluation.replay`) and the Python API share this one policy, so that replaying
a bag with or without ROS gives the same priors, the same poses and the same decisions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose, pose_errors


@dataclass(frozen=True)
class TrackingConfig:
    """Settings of :class:`Tracker` (the node declares them as parameters of the same names).

    Attributes:
        track_timeout: seconds (image stamps) after a trusted pose during which the next frames are
            localized from it; 0: every frame is localized globally.
        max_jump_translation: largest move (map units) from the last trusted pose, within
            ``max_jump_window``, trusted at once; 0: no translation check.
        max_jump_rotation_deg: largest turn (degrees) likewise; 0: no rotation check.
        max_jump_window: seconds (image stamps) after a trusted pose during which jumps are checked.
        jump_confirmations: consecutive mutually consistent fixes that confirm a jump (1: at once).
    """

    track_timeout: float = 2.0
    max_jump_translation: float = 1.0
    max_jump_rotation_deg: float = 45.0
    max_jump_window: float = 5.0
    jump_confirmations: int = 2

    def __post_init__(self) -> None:
        for name in ("track_timeout", "max_jump_translation", "max_jump_rotation_deg", "max_jump_window"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if int(self.jump_confirmations) < 1:
            raise ValueError(f"jump_confirmations must be >= 1, got {self.jump_confirmations}")


class JumpGate:
    """Rejects implausible jumps between consecutive trusted poses.

    A pose whose image stamp is within ``window`` seconds of the last accepted pose, and that is
    farther than ``max_translation`` (map units) or turned more than ``max_rotation_deg`` from it,
    is a *jump*: it is held back. It is accepted once ``confirmations`` consecutive jumping fixes
    agree with each other (each within the same limits of the one before), i.e. the camera really
    is somewhere else; a fix close to the last accepted pose clears the held-back ones. Beyond the
    window (or after :meth:`reset`, e.g. on /initialpose or a new map) any pose is accepted. A zero
    limit disables that check; ``confirmations`` 1 accepts jumps at once.
    """

    def __init__(self, max_translation: float, max_rotation_deg: float, window: float, confirmations: int) -> None:
        self.max_translation = max_translation
        self.max_rotation_deg = max_rotation_deg
        self.window = window
        self.confirmations = max(1, int(confirmations))
        self.reset()

    @classmethod
    def from_config(cls, config: TrackingConfig) -> JumpGate:
        return cls(config.max_jump_translation, config.max_jump_rotation_deg, config.max_jump_window,
                   config.jump_confirmations)

    def reset(self) -> None:
        self._last: np.ndarray | None = None
        self._last_time = 0.0
        self._pending: list[np.ndarray] = []

    def _jump(self, T_a: np.ndarray, T_b: np.ndarray) -> tuple[bool, float, float]:
        moved, turned = pose_errors(T_a, T_b)
        too_far = self.max_translation > 0 and moved > self.max_translation
        too_turned = self.max_rotation_deg > 0 and turned > self.max_rotation_deg
        return too_far or too_turned, moved, turned

    def check(self, T: np.ndarray, stamp: float) -> tuple[bool, str]:
        """(accept, reason). Accepting records ``T`` as the last accepted pose."""
        if self._last is None or not 0.0 <= stamp - self._last_time <= self.window:
            return self._accept(T, stamp, "")
        jump, moved, turned = self._jump(T, self._last)
        if not jump:
            return self._accept(T, stamp, "")
        if self._pending and not self._jump(T, self._pending[-1])[0]:
            self._pending.append(T)
        else:
            self._pending = [T]
        if len(self._pending) >= self.confirmations:
            return self._accept(T, stamp, f"jump of {moved:.3g} / {turned:.3g} deg confirmed by "
                                          f"{len(self._pending)} consistent fixes")
        return False, (f"jump rejected: {moved:.3g} map units / {turned:.3g} deg from the pose accepted "
                       f"{stamp - self._last_time:.2f} s earlier (limits {self.max_translation:g} / "
                       f"{self.max_rotation_deg:g} deg); {len(self._pending)}/{self.confirmations} confirmations")

    def _accept(self, T: np.ndarray, stamp: float, note: str) -> tuple[bool, str]:
        self._last, self._last_time, self._pending = np.array(T, dtype=float), stamp, []
        return True, note


@dataclass
class TrackedResult:
    """One frame of a stream: what the localizer answered and whether the pose is trusted.

    ``trusted``: the localizer accepted the pose and the jump gate let it through (publish it).
    ``from_track``: the frame was localized from the track (its prior is the last trusted pose).
    ``note``: why a pose the localizer accepted is not trusted, or a remark on a trusted one (a
    confirmed jump). ``prior_note``: where the prior came from (" (tracking from the last pose)",
    ...), empty for a global search.
    """

    result: object  # LocalizationResult
    trusted: bool
    note: str = ""
    prior: np.ndarray | None = None
    prior_note: str = ""
    from_track: bool = False


class Tracker:
    """The tracking policy and jump gate of one camera stream (thread-safe; see the module docstring)."""

    def __init__(self, config: TrackingConfig | None = None) -> None:
        self._lock = threading.Lock()
        self.config = config or TrackingConfig()
        self._gate = JumpGate.from_config(self.config)
        # The last trusted fix: (stamp seconds, camera frame, T_map_camera, T_odom_camera or None).
        self._last_fix: tuple[float, str, np.ndarray, np.ndarray | None] | None = None

    def configure(self, config: TrackingConfig) -> None:
        """New settings; the track and the gate's history are kept."""
        with self._lock:
            self.config = config
            g = self._gate
            g.max_translation, g.max_rotation_deg = config.max_jump_translation, config.max_jump_rotation_deg
            g.window, g.confirmations = config.max_jump_window, max(1, int(config.jump_confirmations))

    def reset(self) -> None:
        """Forget the track and the gate's history (a new map, or the user says where the camera is)."""
        with self._lock:
            self._last_fix = None
            self._gate.reset()

    def prior(self, stamp: float, camera_frame: str = "",
              T_odom_camera: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
        """The last trusted pose as the prior of a frame at ``stamp`` (seconds), and a note; (None, "")
        when there is no recent one of this camera frame. Moved by odometry when ``T_odom_camera``
        is known now and was known at the last fix."""
        with self._lock:
            last, timeout = self._last_fix, self.config.track_timeout
        if last is None or timeout <= 0:
            return None, ""
        when, frame, T_map_camera, T_odom_then = last
        if frame != camera_frame or abs(stamp - when) > timeout:
            return None, ""
        if T_odom_then is not None and T_odom_camera is not None:
            return T_map_camera @ invert_pose(T_odom_then) @ T_odom_camera, " (tracking, moved by odometry)"
        return T_map_camera, " (tracking from the last pose)"

    def localize(self, localizer, image: np.ndarray, camera: PinholeCamera, stamp: float, camera_frame: str = "",
                 T_odom_camera: np.ndarray | None = None, prior: np.ndarray | None = None,
                 prior_note: str = "") -> TrackedResult:
        """Localize one frame of the stream with ``localizer`` and decide whether its pose is trusted.

        ``stamp``: the image's time in seconds; ``camera_frame``: its optical frame (a track is
        kept per frame name); ``T_odom_camera``: odometry's pose of the camera at ``stamp``, when
        known; ``prior`` (with ``prior_note``): a prior from elsewhere (e.g. /initialpose), used
        instead of the track.
        """
        from_track = prior is None
        if from_track:
            prior, prior_note = self.prior(stamp, camera_frame, T_odom_camera)
            from_track = prior is not None
        result = localizer.localize(image, camera, prior)
        if not result.success:
            return TrackedResult(result, False, "", prior, prior_note, from_track)
        trusted, note = self.admit(result.T_world_camera, stamp, camera_frame, T_odom_camera)
        return TrackedResult(result, trusted, note, prior, prior_note, from_track)

    def admit(self, T_map_camera: np.ndarray, stamp: float, camera_frame: str = "",
              T_odom_camera: np.ndarray | None = None) -> tuple[bool, str]:
        """(trusted, note) of a pose the localizer accepted for a frame at ``stamp``: the jump
        gate's verdict. A trusted pose becomes the track (with the odometry given)."""
        T_map_camera = np.asarray(T_map_camera, dtype=float)
        with self._lock:
            trusted, note = self._gate.check(T_map_camera, stamp)
            if trusted:
                self._last_fix = (stamp, camera_frame, T_map_camera,
                                  None if T_odom_camera is None else np.asarray(T_odom_camera, dtype=float))
        return trusted, note
