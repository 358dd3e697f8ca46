"""netpost: the Internet's application-layer services in one Python server."""

__version__ = "0.1.0"
