"""``kafka://host:port[,host:port]/topic``: a topic as the runner's input
(:class:`KafkaSource`) or exactly-once output (:class:`KafkaSink`); the ``kafka`` extra.

Both take ``kafkaConnectTimeoutMs`` (10000) and librdkafka properties (names with a
dot, ``producer.X`` / ``consumer.X`` for one client) as URL query parameters or
options, under the rules of :mod:`actionstate.stores.options`. The input also takes
``partitions`` (a comma list; default every partition), the output ``partitions`` and
``replicationFactor`` of a topic it creates (1 and 1). Modules: ``endpoint`` (URL,
options, the identity a state saves), ``source``, ``sink``. Logs go to the
``actionstate.connectors.kafka`` logger.
"""

from __future__ import annotations

from actionstate.connectors.kafka.sink import KafkaSink
from actionstate.connectors.kafka.source import KEY_OF_MESSAGE, KafkaSource

__all__ = ["KEY_OF_MESSAGE", "KafkaSink", "KafkaSource"]
