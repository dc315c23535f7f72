"""Test helpers shipped with actionstate: the store contract suite and a fake LLM server."""

from actionstate.testing.fake_llm import FakeLLMServer

__all__ = ["FakeLLMServer"]
