"""The Flink runner: the same agent on Apache Flink (PyFlink), extra ``flink``.

The job: a Kafka topic (Flink's Kafka connector, read committed) -> a Python map
that takes each record's agent key -> ``key_by`` -> ``AgentFunction``, a
``KeyedProcessFunction`` that runs inputs' chains of actions through
:func:`~actionstate.durable.chain.process_input` -> Flink's Kafka sink, exactly
once (a transaction per Flink checkpoint), each output keyed by the agent key.

The modules: ``job`` (``FlinkJob``, what ``actionstate flink run`` was asked for,
pickled to the workers; the connector jar; each worker's epoch), ``graph`` (the client:
the Kafka tables, the job graph, the execution environment, ``submit``), ``drain``
(``--until-end`` on a cluster: the client drains the job at its input's end), and what
the Python workers run: ``operators`` (``InputDecoder`` and ``AgentFunction``: what
Flink's keyed state and the store keep, several keys in flight, restores, zombies),
``runtime`` (a worker's event loop thread, the job's ``--env``) and ``scanner``
(``KeyScanner``: a key's records on its first input after a restore).

This ``__init__`` imports none of them: the workers unpickle the operators on several
threads at once, and a package ``__init__`` importing its modules deadlocks them on
Python's import locks (see ``operators``). Import the modules themselves.

Old records go by the store's retention (the workers delete nothing); records that
cannot be inputs go to ``--dead-letter`` (docs/architecture.md).
"""
