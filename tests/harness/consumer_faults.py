"""`svctrace ...` whose Kafka consumer meets an error aiokafka leaves to its user.

    python -m tests.harness.consumer_faults FAULT TRIGGER_FILE worker --bootstrap ...

Once TRIGGER_FILE exists, FAULT happens inside aiokafka, which then handles it with its own code:

* heartbeat: every heartbeat response of the group coordinator carries UNKNOWN_SERVER_ERROR (what a
  broker in trouble may answer). aiokafka logs "Heartbeat failed: KafkaError(...)", its heartbeat
  task ends with that error and the coordination routine hands it to the consumer's user
  (check_errors()) and waits for them, as it does when no fetch happens to be waiting for records
  (with records flowing the fetcher hands out what it holds and none waits; a waiting one would
  also get the error).
* fetch: handling a fetch response raises an error aiokafka does not expect (a bug, a response it
  cannot parse). Its fetch routine logs "Unexpected error in fetcher routine" and ends for good.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from aiokafka.consumer import fetcher, group_coordinator, subscription_state
from aiokafka.errors import UnknownError
from aiokafka.protocol.group import HeartbeatRequest


def heartbeat_error(trigger: Path) -> None:
    send_req = group_coordinator.GroupCoordinator._send_req

    async def faulty_send_req(self, request):
        if isinstance(request, HeartbeatRequest) and trigger.exists():
            return SimpleNamespace(error_code=UnknownError.errno)
        return await send_req(self, request)

    group_coordinator.GroupCoordinator._send_req = faulty_send_req
    abort_waiters = subscription_state.SubscriptionState.abort_waiters

    def abort_no_fetch(self, exc):
        if not trigger.exists():
            abort_waiters(self, exc)

    subscription_state.SubscriptionState.abort_waiters = abort_no_fetch


def fetch_error(trigger: Path) -> None:
    proc_fetch_request = fetcher.Fetcher._proc_fetch_request

    async def faulty_proc_fetch_request(self, assignment, node_id, request):
        if trigger.exists():
            raise RuntimeError("injected: a fetch response aiokafka cannot handle")
        return await proc_fetch_request(self, assignment, node_id, request)

    fetcher.Fetcher._proc_fetch_request = faulty_proc_fetch_request


FAULTS = {"heartbeat": heartbeat_error, "fetch": fetch_error}


def main(argv: list[str]) -> int:
    fault, trigger, *args = argv
    FAULTS[fault](Path(trigger))
    from svctrace.cli import main as svctrace_main

    return svctrace_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
