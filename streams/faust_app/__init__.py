"""`svctrace worker`: the operator graph of streams/core on Kafka with faust-streaming.

app.py builds the Faust app (agents, tables), cluster_feed.py keeps the
ClusterIndex in step with the compacted Kubernetes-object topic, progress.py
carries event-time progress between partitions, command.py is the CLI,
metrics.py the Prometheus endpoint.
"""
