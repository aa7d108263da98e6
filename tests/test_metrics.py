"""The Prometheus text exposition of the hub's counters and gauges."""

from __future__ import annotations

from hub.metrics import Metrics


def test_label_values_are_escaped_so_every_sample_stays_on_one_line() -> None:
    metrics = Metrics()
    metrics.inc("notifications_sent_total", channel='web"hook\\ops\nteam')
    metrics.inc("notifications_sent_total", 2, channel="mqtt")
    metrics.gauge("inbox_depth", lambda: 7.0)
    lines = metrics.render_prometheus().splitlines()
    assert lines == [
        "# TYPE hub_inbox_depth gauge",
        "hub_inbox_depth 7",
        "# TYPE hub_notifications_sent_total counter",
        'hub_notifications_sent_total{channel="mqtt"} 2',
        'hub_notifications_sent_total{channel="web\\"hook\\\\ops\\nteam"} 1',
    ]


def test_a_counter_handle_adds_to_the_same_series_as_inc() -> None:
    metrics = Metrics()
    decoded = metrics.counter("messages_decoded_total", profile="parking_bay")
    assert metrics.snapshot() == {}  # nothing shows before the first increment
    decoded()
    decoded()
    metrics.inc("messages_decoded_total", profile="parking_bay")
    metrics.inc("messages_decoded_total", profile="traffic_counter")
    assert metrics.value("messages_decoded_total", profile="parking_bay") == 3
    assert metrics.total("messages_decoded_total") == 4
