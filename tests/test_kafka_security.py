"""Kafka TLS/SASL settings come from the environment the Helm chart sets."""
from __future__ import annotations

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
