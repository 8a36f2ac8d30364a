"""Rows of figures, their ratios, the printed table and the JSON dump."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Iterable
from typing import Any, TextIO

# Ratio columns, in print order: a row's median divided by the median of the
# row named in ``Row.refs`` under the same column.
RATIO_COLUMNS = ("raw_udp", "udp_tasks", "trio_dtls", "engine")


@dataclasses.dataclass
class Row:
    """One figure: a scenario's case, measured on one target, several times."""

    scenario: str
    case: str
    target: str
    unit: str
    samples: list[float] = dataclasses.field(default_factory=list)
    note: str = ""
    # column -> (case, target) of the reference row in the same scenario
    refs: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    raw: list[Any] = dataclasses.field(default_factory=list)
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    # While the samples were taken, as fractions of the time: the server
    # process on a CPU, the server ready to run but kept off the CPU by other
    # processes, and the load generator on a CPU. If the first two add up to
    # about 1, the server always had work: it was the bottleneck. If not, it
    # waited for the load generator (or, in a ping-pong, for the round trip).
    server_cpu: float | None = None
    server_wait: float | None = None
    load_cpu: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["refs"] = {k: list(v) for k, v in self.refs.items()}
        data["median"] = self.median
        data["min"] = min(self.samples) if self.samples else None
        data["max"] = max(self.samples) if self.samples else None
        return data


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.meta: dict[str, Any] = {}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def find(self, scenario: str, case: str, target: str) -> Row | None:
        for row in self.rows:
            if (row.scenario, row.case, row.target) == (scenario, case, target):
                return row
        return None

    def compute_ratios(self) -> None:
        for row in self.rows:
            row.ratios = {}
            mine = row.median
            for column, (case, target) in row.refs.items():
                ref = self.find(row.scenario, case, target)
                theirs = None if ref is None else ref.median
                if mine is not None and theirs:
                    row.ratios[column] = mine / theirs

    def print_table(self, out: TextIO = sys.stdout) -> None:
        self.compute_ratios()
        headers = ["case", "target", "median", "min", "max", "unit"]
        headers += [f"/{c}" for c in RATIO_COLUMNS] + [
            "server cpu",
            "server wait",
            "load cpu",
            "note",
        ]
        for scenario in sorted({row.scenario for row in self.rows}):
            rows = [r for r in self.rows if r.scenario == scenario]
            table = [headers] + [_cells(r) for r in rows]
            widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
            print(f"\n== {scenario}", file=out)
            for line in table:
                text = "  ".join(
                    cell.ljust(w) if i in (0, 1, 5, len(headers) - 1) else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(line, widths, strict=True))
                )
                print(text.rstrip(), file=out)

    def write_json(self, path: str) -> None:
        self.compute_ratios()
        data = {"meta": self.meta, "rows": [r.to_json() for r in self.rows]}
        with open(path, "w") as stream:
            json.dump(data, stream, indent=1, default=_json_default)
            stream.write("\n")


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return repr(value)


def fmt(value: float | None) -> str:
    """Three significant digits, thousands separated; '-' for nothing."""
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cells(row: Row) -> list[str]:
    samples: Iterable[float] = row.samples
    low = min(samples) if row.samples else None
    high = max(samples) if row.samples else None
    ratios = [f"{row.ratios[c]:.3g}" if c in row.ratios else "" for c in RATIO_COLUMNS]
    cpu = [
        "" if value is None else f"{value:.0%}"
        for value in (row.server_cpu, row.server_wait, row.load_cpu)
    ]
    median = fmt(row.median) if row.samples else ("" if row.note else "-")
    return [
        row.case,
        row.target,
        median,
        fmt(low) if row.samples else "",
        fmt(high) if row.samples else "",
        row.unit,
        *ratios,
        *cpu,
        row.note,
    ]
