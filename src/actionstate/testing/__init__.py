"""Test helpers shipped with actionstate.

* :mod:`~actionstate.testing.contract`: the store contract suite (``StoreContract``).
* :mod:`~actionstate.testing.fake_llm`: :class:`FakeLLMServer`, a counting
  OpenAI-compatible server.
* :mod:`~actionstate.testing.restart`: ``Crash`` and ``Restartable``, to crash and
  restart an agent inside one test.
* :mod:`~actionstate.testing.cli`: run the ``actionstate`` command in a subprocess.

From a source checkout only (they use its scripts and examples):

* :mod:`~actionstate.testing.services`: start the local Kafka and Fluss services.
* :mod:`~actionstate.testing.crash`: SIGKILL the example triage run at random points.
* :mod:`~actionstate.testing.recovery`: SIGKILL a run at chosen moments, and compare
  it with an uninterrupted one.

``contract``, ``services`` and ``recovery`` need pytest.
"""

from actionstate.testing.fake_llm import FakeLLMServer

__all__ = ["FakeLLMServer"]
