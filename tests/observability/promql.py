"""PromQL expressions of the shipped dashboards and alert rules, and the metric names they read."""

from __future__ import annotations

import json
import re

import yaml

from shared.settings import REPO_ROOT

DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"

# Series Prometheus makes itself for every target; no application exports them.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Counters that only exist once their event happened (their labels are not known before): a healthy run may have
# none. The stack must still declare them (HELP and TYPE in /metrics).
EVENT_ONLY = frozenset({"bars_rejected_total", "decision_ignored_total"})
# Exported by the mt5 broker only (a paper replay never imports it): checked against that module's counters instead.
MT5_ONLY = frozenset({"mt5_alerts_total"})

_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "inf", "nan",
})
_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every target of every panel of every dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.stem}: {panel['title']} [{target['refId']}]", target["expr"]))
    return out


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expr) of every alerting rule."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (functions, keywords, label names and durations left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # grouping labels
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers, 1e-9 included
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if word.lower() in _KEYWORDS or following.startswith("("):
            continue
        if re.fullmatch(r"\d+(\.\d+)?(e-?\d+)?", word):
            continue
        names.add(word)
    return names


def family(name: str) -> str:
    """A histogram's series name without its _bucket/_count/_sum suffix."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def exported(metrics_text: str) -> tuple[set[str], set[str]]:
    """(names with at least one sample, names declared by a # TYPE line) of a /metrics page."""
    with_samples = set()
    declared = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            declared.add(name)
            if kind == "counter":
                declared.add(f"{name}_total")
        elif line and not line.startswith("#"):
            with_samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return with_samples, declared
