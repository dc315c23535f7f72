"""An unbounded PyFlink job through the Kafka connector jar: Kafka source →
keyed Python ``KeyedProcessFunction`` (a per-key count in ValueState) → Kafka
sink, exactly once (transactions committed on checkpoints).

Input values are ``key:seq``; each output value is ``key:seq:count``, where
count is how many inputs of that key the state had seen, this one included: a
restore from a checkpoint keeps the counts continuous.

    flink run -d -py kafka_job.py CONNECTOR_JAR HOST:PORT INPUT_TOPIC OUTPUT_TOPIC NAME \
        PARALLELISM CHECKPOINT_INTERVAL_MS
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import (
    CheckpointingMode,
    KeyedProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.datastream.state import ValueStateDescriptor


class Count(KeyedProcessFunction):  # type: ignore[misc]
    def open(self, runtime_context: RuntimeContext) -> None:
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.LONG()))

    def process_element(self, value: str, ctx: Any) -> Iterator[str]:
        count = (self.count.value() or 0) + 1
        self.count.update(count)
        yield f"{value}:{count}"


def main() -> None:
    # Positional: `flink run` takes options after -py FILE as its own (--jar as
    # --jarfile, --parallelism...) until the first argument that is not one.
    parser = argparse.ArgumentParser()
    for name in ("jar", "servers", "input", "output", "name"):
        parser.add_argument(name)
    parser.add_argument("parallelism", type=int)
    parser.add_argument("checkpoint_interval_ms", type=int)
    args = parser.parse_args()

    # Small bundles: a record reaches the sink within ~50 ms, not up to 1 s.
    config = Configuration()
    config.set_string("python.fn-execution.bundle.time", "50")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(f"file://{args.jar}")
    env.set_parallelism(args.parallelism)
    env.enable_checkpointing(args.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)

    source = (KafkaSource.builder()
              .set_bootstrap_servers(args.servers)
              .set_topics(args.input)
              .set_group_id(args.name)
              .set_starting_offsets(KafkaOffsetsInitializer.earliest())
              .set_value_only_deserializer(SimpleStringSchema())
              .build())
    sink = (KafkaSink.builder()
            .set_bootstrap_servers(args.servers)
            .set_record_serializer(KafkaRecordSerializationSchema.builder()
                                   .set_topic(args.output)
                                   .set_value_serialization_schema(SimpleStringSchema())
                                   .build())
            .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .set_transactional_id_prefix(args.name)
            # At most the broker's transaction.max.timeout.ms (15 min by default);
            # the sink's default (1 h) is refused.
            .set_property("transaction.timeout.ms", "60000")
            .build())
    (env.from_source(source, WatermarkStrategy.no_watermarks(), "input")
        .key_by(lambda v: v.split(":")[0], key_type=Types.STRING())
        .process(Count(), output_type=Types.STRING())
        .sink_to(sink))
    env.execute(args.name)


if __name__ == "__main__":
    main()
