"""Runners drive agents over keyed input streams."""

from actionstate.runners.local import LocalRunner

__all__ = ["LocalRunner"]
