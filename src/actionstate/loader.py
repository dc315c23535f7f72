"""Loading an agent class from ``path/to/file.py:Class`` or ``package.module:Class``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from actionstate.agent import Agent
from actionstate.errors import AgentDefinitionError, ConfigError

__all__ = ["load_agent_class"]


def load_agent_class(spec: str) -> type[Agent]:
    """The Agent subclass that ``spec`` names.

    Raises:
        ConfigError: the spec is malformed or its module cannot be imported.
        AgentDefinitionError: the attribute is not an Agent with actions.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"agent {spec!r} must look like path/to/file.py:ClassName or package.module:ClassName"
        )
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ConfigError(f"agent file {target} does not exist")
            module_name = path.stem
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            existing = sys.modules.get(module_name)
            if existing is not None and getattr(existing, "__file__", None) == str(path):
                module = existing
            else:
                module_spec = importlib.util.spec_from_file_location(module_name, path)
                assert module_spec is not None and module_spec.loader is not None
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_name] = module
                module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot import agent module {target!r}: {type(exc).__name__}: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise AgentDefinitionError(f"{spec}: {attr!r} is not an Agent subclass in {target}")
    if not cls.action_ids():
        raise AgentDefinitionError(f"{spec}: the agent has no @action methods")
    return cls
