"""A keyed Python function that registers a processing-time timer per element and
logs every registration and firing (tests/flink/test_pyflink_timers.py).

Arguments: LOG_DIR DUE_MS SLEEP_S BUNDLE_SIZE [BUNDLE_MS]. Each element of a generated stream (8
per second, 40 keys) registers a timer DUE_MS later for its key after SLEEP_S of work
(a slow function: bundles hold several elements); LOG_DIR/<pid>.log gets one line per
registration and firing.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.table import StreamTableEnvironment

LOG_DIR, DUE_MS = sys.argv[1], int(sys.argv[2])
SLEEP_S, BUNDLE_SIZE = float(sys.argv[3]), sys.argv[4]
BUNDLE_MS = sys.argv[5] if len(sys.argv) > 5 else "5"  # the runner's bundle time


class Timers(KeyedProcessFunction):  # type: ignore[misc]
    def open(self, runtime_context: RuntimeContext) -> None:
        os.makedirs(LOG_DIR, exist_ok=True)
        self.log = open(os.path.join(LOG_DIR, f"{os.getpid()}.log"), "a")

    def process_element(self, value: str, ctx: Any) -> Iterator[str]:
        time.sleep(SLEEP_S)
        at = ctx.timer_service().current_processing_time() + DUE_MS
        ctx.timer_service().register_processing_time_timer(at)
        self.log.write(f"reg {ctx.get_current_key()} {at}\n")
        self.log.flush()
        return iter(())

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[str]:
        self.log.write(f"fire {ctx.get_current_key()} {timestamp}\n")
        self.log.flush()
        return iter(())


env = StreamExecutionEnvironment.get_execution_environment()
env.enable_checkpointing(2000)
env.set_parallelism(1)
t_env = StreamTableEnvironment.create(env)
t_env.get_config().set("python.fn-execution.bundle.size", BUNDLE_SIZE)
t_env.get_config().set("python.fn-execution.bundle.time", BUNDLE_MS)
t_env.execute_sql("""
    CREATE TABLE numbers (n BIGINT) WITH ('connector'='datagen', 'rows-per-second'='8',
      'fields.n.kind'='random', 'fields.n.min'='0', 'fields.n.max'='1000000')""")
keys = t_env.to_data_stream(t_env.from_path("numbers")).map(
    lambda row: f"k{row[0] % 40}", output_type=Types.STRING()).uid("keys")
(keys.key_by(lambda key: key, key_type=Types.STRING())
     .process(Timers(), output_type=Types.STRING()).uid("timers")
     .print())
env.execute_async("pyflink-timers")
