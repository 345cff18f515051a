"""The HTTP surface: L{StreamdApp} and the modules it mounts."""

from streamd.web.app import StreamdApp

__all__ = ["StreamdApp"]
