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
