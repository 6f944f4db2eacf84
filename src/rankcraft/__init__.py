"""rankcraft: build, search and serve CTR / conversion ranking models."""

__version__ = "0.1.0"
