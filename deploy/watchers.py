"""The demo's monitoring: what a newcomer points a browser, Prometheus or Home Assistant at.

`spb-deploy demo --day` runs, beside the community, the dashboard (`spb-monitor web`) and
the community's exporter (`spb-monitor metrics`) on the broker's read-only loopback listener,
the JSON mirror with Home Assistant discovery (`spb-monitor mirror`) as the community's
`mirror` identity, and every validator's own metrics (`spb-ledger run --metrics-port`). The
ports are chosen before anything starts, so the demo prints where everything is at once.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from broker.runtime import free_port

DASHBOARD_PORT = 8765  # preferred; another free one when taken
METRICS_PORT = 9465
PROMETHEUS_NAME = "prometheus.yml"  # in the community dir


@dataclass(frozen=True)
class Watchers:
    dashboard: int
    metrics: int
    validators: tuple[int, ...]  # each validator's --metrics-port
    local_url: str  # the broker's read-only listener

    @classmethod
    def choose(cls, validators: int, local_port: int) -> Watchers:
        return cls(
            dashboard=_free_or_any(DASHBOARD_PORT),
            metrics=_free_or_any(METRICS_PORT),
            validators=tuple(free_port() for _ in range(validators)),
            local_url=f"mqtt://127.0.0.1:{local_port}",
        )

    def commands(self, root: Path, bus_url: str) -> list[tuple[list[str], str]]:
        """(python -m arguments, log name) of the three monitors."""
        monitor = ["monitor.cli"]
        return [
            ([*monitor, "web", str(root), "--broker", self.local_url, "--port", str(self.dashboard)], "dashboard"),
            ([*monitor, "metrics", str(root), "--broker", self.local_url, "--port", str(self.metrics)], "metrics"),
            ([*monitor, "mirror", str(root), "--broker", bus_url], "mirror"),
        ]

    def validator_args(self, i: int) -> list[str]:
        return ["--metrics-port", str(self.validators[i])]

    def prometheus_config(self) -> str:
        """A prometheus.yml scraping the community and every validator: `prometheus
        --config.file DIR/prometheus.yml`, then import docs/grafana/spb-community.json."""
        validators = ", ".join(f'"127.0.0.1:{p}"' for p in self.validators)
        return (
            "# Written by `spb-deploy demo --day` for this run's ports.\n"
            "global:\n  scrape_interval: 5s\n"
            "scrape_configs:\n"
            f'  - job_name: spb-community\n    static_configs:\n      - targets: ["127.0.0.1:{self.metrics}"]\n'
            f"  - job_name: spb-validators\n    static_configs:\n      - targets: [{validators}]\n"
        )

    def lines(self) -> list[str]:
        """Where to look, for the console."""
        validators = " ".join(f"http://127.0.0.1:{p}/metrics" for p in self.validators)
        local_port = self.local_url.rsplit(":", 1)[1]
        return [
            f"[bold]dashboard[/]  http://127.0.0.1:{self.dashboard}/  (verified data only; works offline)",
            f"[bold]metrics[/]    http://127.0.0.1:{self.metrics}/metrics  (the community, for Prometheus/Grafana)",
            f"[bold]validators[/] {validators}",
            f"[bold]Prometheus[/] prometheus --config.file {PROMETHEUS_NAME} in the community dir; Grafana: import "
            "docs/grafana/spb-community.json",
            f"[bold]JSON[/]       mosquitto_sub -h 127.0.0.1 -p {local_port} -t 'spb-json/v1/#' -v"
            "  (Home Assistant: MQTT integration on this broker, discovery prefix homeassistant)",
        ]


def _free_or_any(preferred: int) -> int:
    """`preferred` if nothing listens on it on loopback, else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred
