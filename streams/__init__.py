"""svctrace.streams: the sans-IO core, metadata, the Faust app and the in-process runner."""
