"""The lower layer: values, digests, state records, their codec and the index.

Nothing here imports the engine (``actionstate.durable``), the stores, the
runners or agent memory; stores build on it, and the engine builds on stores.
"""
