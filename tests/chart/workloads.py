"""Reading rendered workloads: the driver's configuration parsed from a container's
command line, node DaemonSets by OS, the volume behind a mount, durations."""

from __future__ import annotations

import re

from driver.cli import build_parser
from driver.config import Config, config_from_args
from tests.chart.support import SCENARIOS, Doc, container, expand_env, of_kind, one, os_of, pod_spec

IDS = list(SCENARIOS)


def driver_config(workload: Doc) -> Config:
    """Parse a driver container's command line with the driver's own parser."""
    driver = container(workload, "driver")
    args = expand_env(driver["args"], driver.get("env", []))
    assert args[0] == "serve"
    parsed = build_parser().parse_args(args)  # exits (SystemExit) on an unknown flag
    return config_from_args(parsed)  # raises InvalidArgument on a bad value


def driver_name(docs: list[Doc]) -> str:
    name: str = one(docs, "CSIDriver")["metadata"]["name"]
    return name


def linux_nodes(docs: list[Doc]) -> list[Doc]:
    return [w for w in of_kind(docs, "DaemonSet") if os_of(w) == "linux"]


def windows_nodes(docs: list[Doc]) -> list[Doc]:
    return [w for w in of_kind(docs, "DaemonSet") if os_of(w) == "windows"]


def volume_named(workload: Doc, name: str) -> Doc:
    for volume in pod_spec(workload).get("volumes", []):
        if volume["name"] == name:
            return volume
    raise AssertionError(f"no volume {name!r}")


def mount_source(workload: Doc, c: Doc, mount_path: str) -> Doc:
    for mount in c.get("volumeMounts", []):
        if mount["mountPath"] == mount_path:
            return volume_named(workload, mount["name"])
    raise AssertionError(f"{c['name']}: nothing mounted at {mount_path}")


def duration_seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total
