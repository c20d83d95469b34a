"""`svctrace worker`: the operator graph of streams/core on Kafka with faust-streaming.

app.py builds the Faust app (agents, tables, the GlobalTable of Kubernetes
objects), progress.py carries event-time progress between partitions,
command.py is the CLI, metrics.py the Prometheus endpoint.
"""
