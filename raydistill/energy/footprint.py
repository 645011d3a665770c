"""From energy to footprint: CO2e, water and embodied emissions, each with its inputs.

    CO2e (g)   = kWh × PUE × grid intensity (g/kWh)       [table, explicit value, or hourly CSV]
    water (L)  = kWh × WUE (on site) + kWh × PUE × grid water intensity (L/kWh)
    embodied   = GPU-hours × per-GPU embodied CO2e ÷ lifetime hours

The shipped table holds approximate, rounded region averages with their source and year: use
`gco2_per_kwh` or an hourly CSV of your grid where you know better.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path

from raydistill.errors import ConfigError

J_PER_KWH = 3.6e6
# Embodied emissions of one datacenter GPU, its share of the server included, amortized over a
# 6-year life at full use. 150 kg CO2e is the per-GPU figure Luccioni et al. (2023, "Estimating
# the carbon footprint of BLOOM") derive; both numbers are assumptions: override them.
EMBODIED_KG_PER_GPU = 150.0
LIFETIME_HOURS = 6 * 8760.0


@dataclass(frozen=True)
class GridRow:
    region: str
    gco2_per_kwh: float
    water_l_per_kwh: float | None
    source: str
    year: int


@lru_cache(maxsize=1)
def grid_table() -> dict[str, GridRow]:
    text = resources.files("raydistill").joinpath("data/grid_intensity.csv").read_text()
    table = {}
    for row in csv.DictReader(io.StringIO(text)):
        water = row["water_l_per_kwh"].strip()
        table[row["region"]] = GridRow(row["region"], float(row["gco2_per_kwh"]),
                                       float(water) if water else None, row["source"],
                                       int(row["year"]))
    return table


@dataclass(frozen=True)
class FootprintInputs:
    region: str = "WORLD"
    pue: float = 1.0  # a bare machine; datacenters report 1.1–1.6
    gco2_per_kwh: float | None = None  # explicit grid intensity (overrides the table)
    hourly_csv: str = ""  # timestamp,gco2_per_kwh per hour (overrides both)
    wue_l_per_kwh: float = 0.0  # on-site water usage effectiveness
    water_l_per_kwh: float | None = None  # grid water intensity (overrides the table)
    embodied_kg_per_gpu: float = EMBODIED_KG_PER_GPU
    lifetime_hours: float = LIFETIME_HOURS

    def __post_init__(self) -> None:
        if not self.pue >= 1.0:
            raise ConfigError(f"footprint.pue must be >= 1.0, got {self.pue}")
        for name in ("wue_l_per_kwh", "embodied_kg_per_gpu"):
            if getattr(self, name) < 0:
                raise ConfigError(f"footprint.{name} must be >= 0")
        if not self.lifetime_hours > 0:
            raise ConfigError("footprint.lifetime_hours must be > 0")


@dataclass(frozen=True)
class Footprint:
    energy_kwh: float
    co2e_g: float
    water_l: float
    embodied_co2e_g: float
    method: dict[str, str] = field(default_factory=dict)  # figure -> how it was obtained
    inputs: dict[str, float | str] = field(default_factory=dict)


def intensity(inputs: FootprintInputs) -> tuple[float, str]:
    if inputs.gco2_per_kwh is not None:
        return inputs.gco2_per_kwh, "explicit"
    row = grid_table().get(inputs.region)
    if row is None:
        some = ", ".join(sorted(grid_table())[:8])
        raise ConfigError(f"unknown region {inputs.region!r} (e.g. {some}, ...); or set "
                          "footprint.gco2_per_kwh to your grid's intensity")
    return row.gco2_per_kwh, f"table:{row.region} {row.source} {row.year}"


def read_hourly(path: str | Path) -> dict[int, float]:
    """An hourly CSV `timestamp,gco2_per_kwh` (ISO 8601, UTC if no zone) → {hour: g/kWh}."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"hourly intensity file {p} not found")
    hours = {}
    with open(p, newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                ts = datetime.fromisoformat(row["timestamp"])
                value = float(row["gco2_per_kwh"])
            except (KeyError, ValueError, TypeError):
                raise ConfigError(f"{p} line {n}: expected timestamp,gco2_per_kwh") from None
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
            hours[int(ts.timestamp() // 3600)] = value
    if not hours:
        raise ConfigError(f"{p}: no rows")
    return hours


def co2e_hourly_g(intervals: list[tuple[float, float, float]], hourly: dict[int, float],
                  pue: float) -> float:
    """Σ over (t_start_s, t_end_s, energy_j), energy spread evenly in time, × that hour's g/kWh."""
    total = 0.0
    for start, end, energy_j in intervals:
        if end <= start:
            total += energy_j / J_PER_KWH * pue * _hour_value(hourly, int(start // 3600))
            continue
        t = start
        while t < end:
            hour = int(t // 3600)
            stop = min(end, (hour + 1) * 3600.0)
            share = (stop - t) / (end - start)
            total += energy_j * share / J_PER_KWH * pue * _hour_value(hourly, hour)
            t = stop
    return total


def _hour_value(hourly: dict[int, float], hour: int) -> float:
    if hour in hourly:
        return hourly[hour]
    raise ConfigError(f"the hourly intensity file has no value for hour "
                      f"{datetime.fromtimestamp(hour * 3600, timezone.utc).isoformat()}")


def compute_footprint(energy_j: float, inputs: FootprintInputs, gpu_hours: float = 0.0,
                      intervals: list[tuple[float, float, float]] | None = None) -> Footprint:
    if energy_j < 0 or not math.isfinite(energy_j):
        raise ValueError(f"energy_j must be finite and >= 0, got {energy_j}")
    kwh = energy_j / J_PER_KWH
    method: dict[str, str] = {}
    if inputs.hourly_csv:
        hourly = read_hourly(inputs.hourly_csv)
        co2e = co2e_hourly_g(intervals or [], hourly, inputs.pue)
        method["co2e"] = f"hourly:{Path(inputs.hourly_csv).name}"
        g_per_kwh = co2e / (kwh * inputs.pue) if kwh else float("nan")
    else:
        g_per_kwh, how = intensity(inputs)
        co2e = kwh * inputs.pue * g_per_kwh
        method["co2e"] = how
    row = grid_table().get(inputs.region)
    if inputs.water_l_per_kwh is not None:
        grid_water, method["water"] = inputs.water_l_per_kwh, "explicit"
    elif row is not None and row.water_l_per_kwh is not None:
        grid_water, method["water"] = row.water_l_per_kwh, f"table:{row.region} {row.source}"
    else:
        grid_water, method["water"] = 0.0, "grid water intensity unknown: on-site WUE only"
    water = kwh * inputs.wue_l_per_kwh + kwh * inputs.pue * grid_water
    embodied = gpu_hours * inputs.embodied_kg_per_gpu * 1000.0 / inputs.lifetime_hours
    method["embodied"] = (f"{inputs.embodied_kg_per_gpu:g} kg/GPU over "
                          f"{inputs.lifetime_hours:g} h (assumed)")
    return Footprint(
        energy_kwh=kwh, co2e_g=co2e, water_l=water, embodied_co2e_g=embodied, method=method,
        inputs={"region": inputs.region, "pue": inputs.pue, "gco2_per_kwh": g_per_kwh,
                "wue_l_per_kwh": inputs.wue_l_per_kwh, "grid_water_l_per_kwh": grid_water,
                "gpu_hours": gpu_hours},
    )
