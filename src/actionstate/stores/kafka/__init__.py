"""``kafka://host:9092/topic``: action states in a compacted Kafka topic (extra ``kafka``).

Options (URL query parameters or keyword arguments of
:func:`~actionstate.stores.open_store`; Flink Agents' names and defaults):

==========================================  ==========  ===========================================
option                                      default     meaning
==========================================  ==========  ===========================================
``kafkaBootstrapServers``                   URL host    ``host:port[,host:port...]``
``kafkaActionStateTopic``                   URL path    topic name
``kafkaActionStateTopicNumPartitions``      64          partitions of a topic this store creates
                                                        (alias ``partitions``)
``kafkaActionStateTopicReplicationFactor``  1           replication factor of a created topic
                                                        (alias ``replicationFactor``)
``kafkaActionStateTopicMaxMessageBytes``    16 MiB      largest record (topic ``max.message.bytes``)
``kafkaRetainedCheckpoints``                1           checkpoints whose records are kept
``kafkaActionStateTopicRetentionMs``        none        the broker deletes records older than
                                                        this (a created topic gets
                                                        ``cleanup.policy=compact,delete`` and
                                                        this ``retention.ms``; an existing one
                                                        must have them); none: compacted only.
                                                        Alias ``retentionMs``. What cleans up
                                                        after Flink jobs (their workers delete
                                                        nothing); at least one minute
``kafkaConnectTimeoutMs``                   10000       how long to wait for the broker, and for
                                                        a just-created topic to settle
a librdkafka property                       --          passed to the clients, e.g.
                                                        ``security.protocol``, ``sasl.*``,
                                                        ``ssl.*``, ``compression.type``,
                                                        ``delivery.timeout.ms`` (120000);
                                                        ``producer.X`` / ``consumer.X`` for one
==========================================  ==========  ===========================================

TLS and SASL are librdkafka properties too, e.g. for a SASL_SSL listener with SCRAM:
``?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.username=U&ssl.ca.location=
/path/ca.pem`` with ``sasl.password`` as a keyword option (``--option`` in the CLI). A
failed authentication or TLS handshake is a :class:`~actionstate.errors.StoreError` at
once, naming the problem and the option to fix. Secret values (``sasl.password``,
``sasl.jaas.config``, ``ssl.key.password``...) never appear in messages or reprs, and the
store's ``url`` (which runners keep in checkpoints) shows them as ``***``: a URL holding
one cannot be reopened from there. ``scripts/services/kafka start --secure`` runs such a
broker locally.

A setting given twice (URL and keyword, alias and name, URL host or path and option) must
agree (see :mod:`actionstate.stores.options`); the URL's host may also be one of the
servers ``kafkaBootstrapServers`` lists. The modules: ``store`` (the medium: produce,
flush, read, release), ``config`` (options and their checks, librdkafka properties per
client), ``topic`` (create or check the topic, list offsets, retry while it settles),
``scan`` (read partition ranges back with a consumer), ``partition``, ``retention``
(what release may delete), ``failures`` (librdkafka's errors). Logs go to
the ``actionstate.stores.kafka`` logger, librdkafka's own included.
"""

from __future__ import annotations

from actionstate.stores.kafka.partition import partition_of
from actionstate.stores.kafka.store import KafkaActionStateStore

__all__ = ["KafkaActionStateStore", "partition_of"]
