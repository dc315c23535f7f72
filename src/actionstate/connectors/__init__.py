"""Sources and sinks: where a runner reads inputs and writes outputs (see :mod:`.base`)."""
