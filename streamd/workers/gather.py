"""
One answer from all workers: their status reports side by side, and their Prometheus
metrics summed into one exposition (each worker counts what it did; a scrape sees the
whole server, as from one process).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

#: Per-stream figures of GET / that add up across workers.
_SUMMED = ("readers", "paused_readers", "published", "delivered",
           "published_per_second", "delivered_per_second")


def merge_status(reports: dict[int, dict | None], pids: dict[int, int]) -> dict[str, Any]:
    """
    C{reports}: worker index -> its L{streamd.workers.remote} status report (None: down).
    The answer: the C{workers} list, C{open_streams} summed, each stream's readers and
    rates summed, and the identities' open streams summed.
    """
    workers = []
    sources: dict[str, dict[str, Any]] = {}
    identities: dict[str, int] = {}
    for index in sorted(reports):
        report = reports[index]
        if report is None:
            workers.append({"index": index, "pid": pids.get(index), "open_streams": 0,
                            "up": False})
            continue
        workers.append({"index": index, "pid": report["pid"],
                        "open_streams": report["open_streams"], "up": True})
        for name, entry in report["sources"].items():
            merged = sources.get(name)
            if merged is None:
                sources[name] = dict(entry)
                continue
            for key in _SUMMED:
                if key in entry:
                    merged[key] = round(merged.get(key, 0) + entry[key], 2)
            if merged.get("status") == "ok" and entry.get("status") != "ok":
                merged["status"], merged["reason"] = entry.get("status"), entry.get("reason")
        for name, count in report.get("identities", {}).items():
            identities[name] = identities.get(name, 0) + count
    return {"workers": workers, "open_streams": sum(w["open_streams"] for w in workers),
            "sources": sources, "identities": identities}


def merge_metrics(texts: list[bytes]) -> bytes:
    """Sum the samples of equal name and labels across the workers' expositions."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name.endswith("_created"):  # start times: no sum of those means anything
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            samples = sums[family.name]
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = samples.get(key, 0.0) + s.value
    for name, metric in families.items():
        for (sample, labels), value in sums[name].items():
            metric.add_sample(sample, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self):
        return self.metrics
