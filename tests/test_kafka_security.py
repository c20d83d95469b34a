"""Kafka TLS/SASL settings come from the environment the Helm chart sets."""
from __future__ import annotations

import asyncio
import ssl

import certifi

from svctrace.kafka.clients import connection_settings


def test_plaintext_needs_no_settings():
    assert connection_settings({}) == {}
    assert connection_settings({"SVCTRACE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}) == {}


def test_sasl_plaintext_credentials():
    s = connection_settings({
        "SVCTRACE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SVCTRACE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SVCTRACE_KAFKA_SASL_USERNAME": "svctrace",
        "SVCTRACE_KAFKA_SASL_PASSWORD": "s3cret",
    })
    assert s == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                 "sasl_plain_username": "svctrace", "sasl_plain_password": "s3cret"}


def test_sasl_ssl_builds_a_verifying_tls_context_from_the_ca_file():
    s = connection_settings({
        "SVCTRACE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "SVCTRACE_KAFKA_SSL_CAFILE": certifi.where(),
        "SVCTRACE_KAFKA_SASL_USERNAME": "u",
        "SVCTRACE_KAFKA_SASL_PASSWORD": "p",
    })
    assert s["security_protocol"] == "SASL_SSL" and s["sasl_mechanism"] == "PLAIN"
    assert isinstance(s["ssl_context"], ssl.SSLContext)
    assert s["ssl_context"].verify_mode == ssl.CERT_REQUIRED


SASL_SSL_ENV = {
    "SVCTRACE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SVCTRACE_KAFKA_SSL_CAFILE": certifi.where(),
    "SVCTRACE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "SVCTRACE_KAFKA_SASL_USERNAME": "svctrace",
    "SVCTRACE_KAFKA_SASL_PASSWORD": "s3cret",
}


def _worker(monkeypatch, env: dict):
    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Worker(WorkerConfig(bootstrap="127.0.0.1:9"))  # builds the app; connects to nothing


def _feed_client(worker):
    """The client of the consumer that reads svctrace.k8s.objects into the ClusterIndex (not started)."""
    async def build():
        return worker.cluster_feed.new_consumer()._client

    return asyncio.run(build())


def test_worker_passes_sasl_ssl_settings_to_faust_and_to_its_cluster_feed(monkeypatch):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    worker = _worker(monkeypatch, SASL_SSL_ENV)
    # What Faust's consumer, producer and admin client are built with.
    auth = credentials_to_aiokafka_auth(worker.app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svctrace", "s3cret")
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # The consumer reading svctrace.k8s.objects into the ClusterIndex.
    client = _feed_client(worker)
    assert client._security_protocol == "SASL_SSL" and client._sasl_mechanism == "SCRAM-SHA-256"
    assert client._sasl_plain_username == "svctrace" and client._ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_worker_tls_only_and_plaintext(monkeypatch):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    tls = _worker(monkeypatch, {"SVCTRACE_KAFKA_SECURITY_PROTOCOL": "SSL", "SVCTRACE_KAFKA_SSL_CAFILE": certifi.where()})
    auth = credentials_to_aiokafka_auth(tls.app.conf.broker_credentials)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    assert _feed_client(tls)._security_protocol == "SSL"
    monkeypatch.setenv("SVCTRACE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    plain = _worker(monkeypatch, {})
    assert plain.app.conf.broker_credentials is None
    assert _feed_client(plain)._security_protocol == "PLAINTEXT"
