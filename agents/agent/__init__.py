"""The node agent: capture source -> redaction -> batches -> Kafka (or a file); `svctrace agent`."""
