"""Camera sampling: random training views, orbit test views and the ``CameraBatch`` type."""

from .cameras import CameraBatch, CameraConfig, RandomCameraSampler, make_cameras, orbit_cameras

__all__ = ["CameraBatch", "CameraConfig", "RandomCameraSampler", "make_cameras", "orbit_cameras"]
