"""A bounded PyFlink DataStream job for the cluster smoke test: a collection
through a Python ``map`` into a file sink (batch mode, so the sink's files are
finished when the job is).

    flink run -d -py smoke_job.py OUTPUT_DIR
"""

from __future__ import annotations

import sys

from pyflink.common import Encoder, Types
from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.file_system import FileSink


def main(output_dir: str) -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_runtime_mode(RuntimeExecutionMode.BATCH)
    env.set_parallelism(2)
    words = env.from_collection([f"w{i}" for i in range(100)], type_info=Types.STRING())
    words.map(lambda w: w.upper(), output_type=Types.STRING()).sink_to(
        FileSink.for_row_format(output_dir, Encoder.simple_string_encoder()).build())
    env.execute("actionstate-flink-smoke")


if __name__ == "__main__":
    main(sys.argv[1])
