"""The HTTP surface: L{StreamdApp} over a L{streamd.service.Service}, and its routes."""

from streamd.web.app import StreamdApp

__all__ = ["StreamdApp"]
