"""Run a real Apache Kafka broker (KRaft, one combined broker+controller) on loopback.

    python lab/kafka/broker.py            # fetch jars if needed, start, create the topics, wait for Ctrl-C
    python lab/kafka/broker.py --fetch    # only fetch the jars into the cache

The jars come from Maven Central through `mvn` and the pom beside this file; they are
cached under ${XDG_CACHE_HOME:-~/.cache}/svctrace/kafka-<version>/. Each broker gets a
fresh temporary data dir and free ports; the JVM heap is capped so a 2-core CI machine
runs it comfortably. The test harness (tests/harness/kafka.py) and the benchmarks use
the `Broker` class below.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"

# Heap: Kafka's default is 1 GiB; 512 MiB is plenty for tests and leaves CI room.
JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]

# One node, small internal topics (fast group-coordinator start), no auto-created topics:
# every topic comes from the catalogue with its explicit partition count.
BROKER_CONFIG = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),  # default 128 MiB would eat a quarter of the heap
    "log.cleaner.backoff.ms": "1000",
}

LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted or started; the message carries the log tail."""


def kafka_version() -> str:
    """The version the pom pins (one source of truth); SVCTRACE_KAFKA_VERSION overrides it."""
    override = os.environ.get("SVCTRACE_KAFKA_VERSION")
    if override:
        return override
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise BrokerError(f"{POM}: no <kafka.version> property")
    return node.text.strip()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "svctrace"


def fetch_jars(version: str | None = None, *, quiet: bool = True) -> Path:
    """Return the folder of the broker's jars, fetching them with mvn on first use."""
    version = version or kafka_version()
    home = cache_root() / f"kafka-{version}"
    libs = home / "libs"
    stamp = home / ".complete"
    if stamp.is_file():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions fetching at once must not mix files
        if stamp.is_file():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("mvn not found: install Maven (Debian package `maven`) to fetch Apache Kafka")
        if libs.exists():
            shutil.rmtree(libs)
        cmd = [
            mvn, "-B", *(["-q"] if quiet else []), "-f", str(POM),
            f"-Dmaven.repo.local={cache_root() / 'm2'}",
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(libs.glob(f"kafka_2.13-{version}.jar")):
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise BrokerError(f"fetching Apache Kafka {version} with mvn failed (exit {proc.returncode}):\n{tail}")
        stamp.write_text(version + "\n")
    return libs


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError("java not found: Apache Kafka needs a Java 17+ runtime (Debian: openjdk-17-jre-headless)")
    return java


class Broker:
    """One KRaft broker process. `start()` waits until the PLAINTEXT listener accepts
    connections (or raises BrokerError with the log tail); `stop()` ends it;
    `restart()` keeps its data and ports."""

    def __init__(
        self,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        version: str | None = None,
        extra_config: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
    ):
        self.host = host
        self.version = version or kafka_version()
        self.port = port or free_port(host)
        self.controller_port = controller_port or free_port(host)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="svctrace-kafka-"))
        self.extra_config = dict(extra_config or {})
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def stdout_file(self) -> Path:
        return self.workdir / "stdout.log"

    def config(self) -> dict[str, str]:
        listeners = f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
        cfg = dict(BROKER_CONFIG)
        cfg.update(
            {
                "listeners": listeners,
                "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
                "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
                "log.dirs": str(self.workdir / "data"),
            }
        )
        cfg.update(self.extra_config)
        return cfg

    def _write_files(self) -> tuple[Path, Path]:
        props = self.workdir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        log4j = self.workdir / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log=self.log_file))
        return props, log4j

    def _java_cmd(self, libs: Path, log4j: Path, *args: str) -> list[str]:
        return [_java(), *JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", *args]

    def log_tail(self, lines: int = 25) -> str:
        """The broker's errors (first ones: the cause) and its last lines, for error messages."""
        parts = []
        for f in (self.stdout_file, self.log_file):
            if not f.is_file():
                continue
            text = f.read_text(errors="replace").splitlines()
            errors = [ln for ln in text if "] ERROR " in ln or "] FATAL " in ln or ln.startswith("Caused by:")]
            if errors:
                parts.append(f"--- {f.name}: errors ---\n" + "\n".join(errors[:15]))
            parts.append(f"--- {f.name}: last {lines} lines ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(no broker output)"

    def format_storage(self, libs: Path) -> None:
        props, log4j = self._write_files()
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = self._java_cmd(libs, log4j, "kafka.tools.StorageTool", "format",
                             f"--cluster-id={cluster_id}",  # "=": an id may start with "-"
                             "--config", str(props))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.workdir} failed (exit {proc.returncode}):\n"
                + "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            )
        self._formatted = True

    def start(self) -> "Broker":
        if self.proc is not None and self.proc.poll() is None:
            return self
        for port in (self.port, self.controller_port):
            if _port_open(self.host, port):
                raise BrokerError(f"cannot start Kafka: {self.host}:{port} is already in use")
        libs = fetch_jars(self.version)
        if not self._formatted:
            self.format_storage(libs)
        props, log4j = self._write_files()
        with open(self.stdout_file, "ab") as out:
            self.proc = subprocess.Popen(
                self._java_cmd(libs, log4j, "kafka.Kafka", str(props)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the broker in order
            )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise BrokerError(f"Kafka {self.version} exited with code {code} while starting\n{self.log_tail()}")
            if _port_open(self.host, self.port):
                return
            time.sleep(0.1)  # poll interval while the JVM boots
        self.stop()
        raise BrokerError(f"Kafka {self.version} did not listen on {self.bootstrap} within {self.startup_timeout:.0f}s\n"
                          f"{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the process (controlled shutdown, then SIGKILL after `timeout`); keep the data."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): for failure tests."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> "Broker":
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the data dir (only one this object created)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def ensure_catalogue_topics(bootstrap: str, prefix: str = "", timeout: float = 60.0) -> list[str]:
    """Wait until the broker serves metadata, then create the catalogue's topics."""
    import asyncio

    from svctrace.kafka.admin import ensure_topics, wait_ready

    async def go() -> list[str]:
        await wait_ready(bootstrap, timeout)
        return await ensure_topics(bootstrap, prefix=prefix, timeout=timeout)

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch", action="store_true", help="only fetch the jars into the cache and print their folder")
    ap.add_argument("--port", type=int, default=9092, help="PLAINTEXT port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--topic-prefix", default="", help="prefix for the catalogue's topic names")
    ap.add_argument("--no-topics", action="store_true", help="do not create the catalogue's topics")
    args = ap.parse_args(argv)
    if args.fetch:
        print(fetch_jars(quiet=False))
        return 0
    broker = Broker(port=args.port or None)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        broker.start()
        if not args.no_topics:
            created = ensure_catalogue_topics(broker.bootstrap, args.topic_prefix)
            print(f"created topics: {', '.join(created) or '(all existed)'}", flush=True)
        print(f"Kafka {broker.version} listening on {broker.bootstrap} (data: {broker.workdir}); Ctrl-C stops it",
              flush=True)
        while not stop and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.5)
        if not stop:
            print(f"broker exited\n{broker.log_tail()}", file=sys.stderr)
            return 1
        return 0
    except BrokerError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            broker.close()


if __name__ == "__main__":
    sys.exit(main())
