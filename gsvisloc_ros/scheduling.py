"""Which frame is localized next when several cameras feed one localizer.

:class:`FrameSlots` keeps the newest frame of each camera (a slot of one per camera: a frame that
arrives before its predecessor was taken replaces it, and the replaced one is counted as dropped)
and hands them out in turn: after camera A's frame, the next camera with a waiting frame goes
first, so a fast camera cannot starve a slow one. The localizer, its map and the worker are one;
only a slot per camera is added, so memory does not grow with the number of cameras beyond the
frames waiting.

ROS-free and not thread-safe: the node uses it under its own lock.
"""

from __future__ import annotations

from collections.abc import Hashable


class FrameSlots:
    """The newest waiting frame per camera, taken round-robin (see the module docstring)."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, object] = {}
        self._order: list[Hashable] = []  # cameras in the order they were first seen
        self._next = 0  # index into _order where the next search starts

    def put(self, camera: Hashable, frame) -> bool:
        """Store ``frame`` as ``camera``'s newest; True when it replaced a frame not taken yet."""
        if camera not in self._order:
            self._order.append(camera)
        replaced = camera in self._slots
        self._slots[camera] = frame
        return replaced

    def take(self) -> tuple[Hashable, object] | None:
        """(camera, frame) of the next camera in turn with a waiting frame; None when none waits."""
        n = len(self._order)
        for i in range(n):
            camera = self._order[(self._next + i) % n]
            if camera in self._slots:
                self._next = (self._next + i + 1) % n
                return camera, self._slots.pop(camera)
        return None

    def pending(self, camera: Hashable | None = None) -> bool:
        """Whether a frame waits (of ``camera``, or of any camera)."""
        return camera in self._slots if camera is not None else bool(self._slots)

    def clear(self) -> int:
        """Drop every waiting frame; returns how many."""
        n = len(self._slots)
        self._slots.clear()
        return n

    def forget(self, camera: Hashable) -> None:
        """Remove ``camera`` (its waiting frame included) from the rotation."""
        self._slots.pop(camera, None)
        if camera in self._order:
            self._order.remove(camera)
            self._next = 0

    def __len__(self) -> int:
        return len(self._slots)
