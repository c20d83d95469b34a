"""`svctrace metadata`: the central Kubernetes metadata watcher (and offline snapshots).

    svctrace metadata --kafka HOST:PORT                 # list+watch, publish to the compacted topic
    svctrace metadata --output objects.jsonl            # the same records as JSON lines
    svctrace metadata --once --output snapshot.jsonl    # one list of everything, then exit
    svctrace metadata --from kubectl.json --output o.jsonl   # convert kubectl -o json/yaml snapshots
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from svctrace import metrics_http
from svctrace.logs import setup_logging
from svctrace.streams.metadata.project import MetadataInputError


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("Kubernetes API")
    src.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, else ~/.kube/config)")
    src.add_argument("--context", help="kubeconfig context")
    src.add_argument("--endpoints", choices=("auto", "slices", "legacy"), default="auto",
                     help="watch EndpointSlices or core/v1 Endpoints (auto: slices where the API serves them)")
    src.add_argument("--watch-timeout", type=int, default=300, metavar="S",
                     help="server-side watch timeout; the watch resumes from its resourceVersion")
    src.add_argument("--from", dest="from_files", nargs="+", metavar="FILE",
                     help="offline: convert kubectl -o json/yaml snapshots instead of reading the API")
    src.add_argument("--once", action="store_true", help="list everything once, publish, exit")
    out = parser.add_argument_group("output")
    out.add_argument("--kafka", "--bootstrap", dest="kafka", metavar="BOOTSTRAP",
                     default=os.environ.get("SVCTRACE_BOOTSTRAP"),
                     help="publish to the compacted topic on this broker (default $SVCTRACE_BOOTSTRAP, like every command)")
    out.add_argument("--topic-prefix", default="", help="prefix of the topic name, prepended as is (e.g. 'staging.'; isolates a deployment)")
    out.add_argument("--output", "-o", metavar="FILE", help="also write records as JSON lines (tombstones: deleted=true)")
    ha = parser.add_argument_group("leader election (one active replica; on when --lease-name is given)")
    ha.add_argument("--lease-name", help="coordination.k8s.io/v1 Lease to hold while active")
    ha.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                    help="namespace of the Lease (default: $POD_NAMESPACE, else default)")
    ha.add_argument("--lease-identity", "--identity", dest="identity",
                    help="this replica's name in the Lease (default: POD_NAME or host-pid)")
    ha.add_argument("--lease-duration", type=float, default=15.0, metavar="S",
                    help="seconds a leader's Lease holds without renewal before another replica takes over")
    ha.add_argument("--renew-deadline", type=float, default=10.0, metavar="S",
                    help="step down when the Lease could not be renewed for this long")
    ha.add_argument("--retry-period", type=float, default=2.0, metavar="S",
                    help="seconds between attempts to acquire or renew the Lease")
    parser.add_argument("--metrics-addr", default="", metavar="HOST:PORT", type=metrics_http.addr_arg,
                        help="serve Prometheus /metrics at this address, like the agent and the worker ('': off)")
    parser.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                        help="serve /metrics on all interfaces at this port (in a pod); overrides --metrics-addr")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log at debug level (default: $SVCTRACE_LOG_LEVEL, or info)")


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """A Kubernetes API client: the kubeconfig file given, else the in-cluster service account
    when running in a pod, else the default kubeconfig (~/.kube/config), at `context`."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(context=context)


def _sink(args):
    from svctrace.kafka import topic_name
    from svctrace.streams.metadata.watcher import TOPIC, FanoutSink, JsonLinesSink, KafkaSink

    sinks = []
    if args.kafka:
        sinks.append(KafkaSink(args.kafka, topic_name(TOPIC, args.topic_prefix)))
    if args.output:
        sinks.append(JsonLinesSink(args.output))
    if not sinks:
        raise SystemExit("svctrace metadata: give --kafka and/or --output")
    return FanoutSink(*sinks)


def run(args) -> int:
    setup_logging(args.verbose, default="info")
    if args.from_files:
        return _convert(args)
    from svctrace.streams.metadata.watcher import (
        RESOURCES, KindWatcher, LeaseElector, Metrics, Watcher, default_identity, default_kinds,
    )

    api = api_client(args.kubeconfig, args.context)
    sink = _sink(args)
    metrics = Metrics()
    if args.metrics_port:
        args.metrics_addr = f"0.0.0.0:{args.metrics_port}"
    if args.metrics_addr:
        _server, host, port = metrics_http.serve(metrics.registry, args.metrics_addr)
        logging.getLogger("svctrace.metadata").info("metrics on http://%s:%d/metrics", host, port)
    try:
        if args.once:
            for kind in default_kinds(api, args.endpoints):
                KindWatcher(api, RESOURCES[kind], sink.publish, metrics).relist("once")
            sink.flush()
            return 0
        elector = None
        if args.lease_name:
            elector = LeaseElector(api, args.lease_namespace, args.lease_name, args.identity or default_identity(),
                                   lease_duration_s=args.lease_duration, renew_deadline_s=args.renew_deadline,
                                   retry_period_s=args.retry_period)
        watcher = Watcher(api, sink, endpoints=args.endpoints, elector=elector, metrics=metrics,
                          watch_timeout_s=args.watch_timeout)
        signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
        signal.signal(signal.SIGINT, lambda *_: watcher.stop())
        watcher.run()
        return 0
    finally:
        sink.close()
        api.close()


def _convert(args) -> int:
    from svctrace.streams.metadata.sources import load_files
    from svctrace.streams.metadata.watcher import Change

    try:
        records = load_files(args.from_files)
    except MetadataInputError as e:
        print(f"svctrace metadata: {e}", file=sys.stderr)
        return 2
    sink = _sink(args)
    try:
        from svctrace.streams.metadata.project import record_key

        sink.publish([Change(record_key(r), None if r["deleted"] else r, r["kind"], r["observed_ts"])
                      for r in records])
        sink.flush()
    finally:
        sink.close()
    return 0
