"""A Python worker unpickles the job's operators on several threads at once (PyFlink's
``beam_operations_fast`` calls ``pickle.loads`` without a lock), importing the operators'
module by its path in a fresh interpreter: no thread may fail on Python's import locks.
With the package's ``__init__`` importing its modules and the operators in modules of
their own, every such pair of threads failed with ``_DeadlockError`` (and on the
cluster the task failed and restarted)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

with warnings.catch_warnings():  # pyflink's own deprecations, at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import actionstate.runners.flink
    from actionstate.runners.flink.job import FlinkJob
    from actionstate.runners.flink.operators import AgentFunction, InputDecoder

UNPICKLE_AT_ONCE = textwrap.dedent("""
    import pickle, sys, threading, warnings
    warnings.simplefilter("ignore")
    blobs = pickle.loads(sys.stdin.buffer.read())
    barrier = threading.Barrier(len(blobs))
    errors = []
    def load(blob):
        barrier.wait()
        try:
            pickle.loads(blob)
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=load, args=(blob,)) for blob in blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(errors)
""")


def test_the_operators_unpickle_on_two_threads_at_once() -> None:
    job = FlinkJob(agent="a:A", input="kafka://h:1/i", key="k", output="kafka://h:1/o",
                   store="memory://", job="imports")
    # As PyFlink ships them (its cloudpickle pickles these importable classes by name)
    blobs = [pickle.dumps(InputDecoder("k", "i", "input topic", False)),
             pickle.dumps(AgentFunction(job))]
    for _ in range(3):  # the broken layouts failed every time
        done = subprocess.run([sys.executable, "-c", UNPICKLE_AT_ONCE],
                              input=pickle.dumps(blobs), capture_output=True, timeout=120,
                              check=True)
        assert done.stdout.decode().strip() == "[]"


def test_the_package_init_imports_nothing() -> None:
    init = Path(actionstate.runners.flink.__file__)
    imports = [node for node in ast.walk(ast.parse(init.read_text()))
               if isinstance(node, ast.Import | ast.ImportFrom)]
    assert not imports
