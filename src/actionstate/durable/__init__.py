"""Durable execution internals: state records, codec, index and call replay."""
