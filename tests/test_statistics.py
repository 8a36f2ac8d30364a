"""The counters and their frozen snapshots."""

from __future__ import annotations

import json

import attrs

import trio_dtlsmux
from trio_dtlsmux._statistics import (
    ConnectionCounters,
    EndpointCounters,
    TrafficCounters,
)


def test_statistics_snapshots_are_json_ready() -> None:
    # A mappingproxy inside a snapshot made json.dumps fail.
    counters = EndpointCounters()
    counters.handshake_failed("timeout")
    snapshot = counters.snapshot(
        TrafficCounters(),
        peers=2,
        handshakes_in_progress=1,
        hellos_waiting=0,
        receive_buffer=None,
        send_buffer=None,
        kernel_drops=None,
        fragmented_hellos_completed=0,
        hello_fragments_dropped=0,
    )
    decoded = json.loads(json.dumps(snapshot.as_dict()))
    assert decoded["handshakes_failed"] == {"timeout": 1}
    assert decoded["peers"] == 2
    connection = ConnectionCounters(datagrams_in=3).snapshot().as_dict()
    assert json.loads(json.dumps(connection))["datagrams_in"] == 3


def test_counters_and_snapshots_declare_the_same_fields() -> None:
    def names(cls: type) -> set[str]:
        return {field.name for field in attrs.fields(cls)}

    assert names(ConnectionCounters) == names(trio_dtlsmux.ConnectionStatistics)
    live = {
        "peers",
        "handshakes_in_progress",
        "hellos_waiting",
        "receive_buffer",
        "send_buffer",
        "kernel_drops",
        "fragmented_hellos_completed",
        "hello_fragments_dropped",
    }
    assert names(EndpointCounters) | names(TrafficCounters) | live == names(
        trio_dtlsmux.EndpointStatistics
    )
