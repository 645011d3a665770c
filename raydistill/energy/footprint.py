"""From energy to footprint: CO2e, water and embodied emissions, each with its inputs.

    CO2e (g)   = kWh × PUE × grid intensity (g/kWh)       [table, explicit value, or hourly CSV]
    water (L)  = kWh × WUE (on site) + kWh × PUE × grid water intensity (L/kWh)
    embodied   = GPU-hours × per-GPU embodied CO2e ÷ lifetime hours

The shipped table (`raydistill/data/grid_intensity.csv`) holds rounded region averages, each
with its source and year: set `gco2_per_kwh`, or give an hourly CSV of your grid, where you know
better. Every figure in a Footprint says how it was obtained (`method`) and from what (`inputs`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path

from raydistill.errors import ConfigError

J_PER_KWH = 3.6e6
S_PER_HOUR = 3600.0
# Embodied CO2e of one datacenter GPU with its share of the server, as in Luccioni, Viguier &
# Ligozat, "Estimating the Carbon Footprint of BLOOM" (JMLR 2023): 150 kg per A100 plus
# 2500 kg per 8-GPU HPE Apollo 6500 server (312.5 kg per GPU), amortized over a 6-year life at
# 85% use. These reproduce the paper's 11.2 t for 1,082,990 GPU-hours. Assumptions: override.
EMBODIED_KG_PER_GPU = 150.0 + 2500.0 / 8
LIFETIME_HOURS = 6 * 8760.0 * 0.85
Interval = tuple[float, float, float]  # (t_start_s, t_end_s, energy_j), Unix seconds


@dataclass(frozen=True)
class GridRow:
    region: str
    gco2_per_kwh: float
    water_l_per_kwh: float | None
    source: str
    year: int


@lru_cache(maxsize=1)
def grid_table() -> dict[str, GridRow]:
    """The shipped region table, keyed by region code (ISO country, cloud region, WORLD)."""
    text = resources.files("raydistill").joinpath("data/grid_intensity.csv").read_text()
    table = {}
    for row in csv.DictReader(io.StringIO(text)):
        water = row["water_l_per_kwh"].strip()
        table[row["region"]] = GridRow(row["region"], float(row["gco2_per_kwh"]),
                                       float(water) if water else None, row["source"],
                                       int(row["year"]))
    return table


def region_row(region: str) -> GridRow:
    row = grid_table().get(region)
    if row is None:
        some = ", ".join(sorted(grid_table())[:10])
        raise ConfigError(f"unknown footprint.region {region!r} (known: {some}, ...); or set "
                          "footprint.gco2_per_kwh to your grid's intensity in g/kWh")
    return row


@dataclass(frozen=True)
class FootprintInputs:
    region: str = "WORLD"
    pue: float = 1.0  # 1.0 = a bare machine / unknown; datacenters report about 1.1–1.6
    gco2_per_kwh: float | None = None  # explicit grid intensity (overrides the table)
    hourly_csv: str = ""  # timestamp,gco2_per_kwh per hour (overrides both)
    wue_l_per_kwh: float = 0.0  # on-site water usage effectiveness (cooling), L per IT kWh
    water_l_per_kwh: float | None = None  # grid water intensity (overrides the table)
    embodied_kg_per_gpu: float = EMBODIED_KG_PER_GPU
    lifetime_hours: float = LIFETIME_HOURS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pue) and self.pue >= 1.0):
            raise ConfigError(f"footprint.pue must be a number >= 1.0, got {self.pue}")
        for name in ("gco2_per_kwh", "wue_l_per_kwh", "water_l_per_kwh",
                     "embodied_kg_per_gpu"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"footprint.{name} must be a number >= 0, got {value}")
        if not (math.isfinite(self.lifetime_hours) and self.lifetime_hours > 0):
            raise ConfigError("footprint.lifetime_hours must be a number > 0")
        if self.hourly_csv:
            read_hourly(self.hourly_csv)  # a bad file fails now, not after the run
        elif self.gco2_per_kwh is None:
            region_row(self.region)


@dataclass(frozen=True)
class Footprint:
    energy_kwh: float
    co2e_g: float
    water_l: float
    embodied_co2e_g: float
    method: dict[str, str] = field(default_factory=dict)  # co2e/water/embodied -> how obtained
    inputs: dict[str, float | str] = field(default_factory=dict)


def co2e_g(energy_kwh: float, *, pue: float, intensity_g_per_kwh: float) -> float:
    return energy_kwh * pue * intensity_g_per_kwh


def water_l(energy_kwh: float, *, pue: float, wue_l_per_kwh: float,
            grid_water_l_per_kwh: float) -> float:
    """On-site cooling water (IT energy × WUE) plus the grid's water for the facility's energy."""
    return energy_kwh * wue_l_per_kwh + energy_kwh * pue * grid_water_l_per_kwh


def embodied_co2e_g(gpu_hours: float, *, per_gpu_kgco2e: float = EMBODIED_KG_PER_GPU,
                    lifetime_hours: float = LIFETIME_HOURS) -> float:
    return gpu_hours * per_gpu_kgco2e * 1000.0 / lifetime_hours


def _parse_time(text: str) -> datetime:
    ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


@lru_cache(maxsize=8)
def _read_hourly_cached(path: str, mtime_ns: int) -> dict[int, float]:
    sums: dict[int, list[float]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                hour = int(_parse_time(row["timestamp"]).timestamp() // S_PER_HOUR)
                value = float(row["gco2_per_kwh"])
            except (KeyError, ValueError, TypeError, AttributeError):
                raise ConfigError(f"{path} line {n}: expected timestamp,gco2_per_kwh (ISO 8601 "
                                  "time, number)") from None
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{path} line {n}: gco2_per_kwh must be a number >= 0")
            sums.setdefault(hour, []).append(value)  # sub-hourly rows: averaged per hour
    if not sums:
        raise ConfigError(f"{path}: no rows (header timestamp,gco2_per_kwh, one row per hour)")
    return {hour: sum(v) / len(v) for hour, v in sums.items()}


def read_hourly(path: str | Path) -> dict[int, float]:
    """An hourly CSV `timestamp,gco2_per_kwh` (ISO 8601, UTC if no zone) → {Unix hour: g/kWh}."""
    p = Path(path)
    try:
        mtime_ns = p.stat().st_mtime_ns
    except OSError:
        raise ConfigError(f"hourly intensity file {p} not found (footprint.hourly_csv)") from None
    try:
        return _read_hourly_cached(str(p), mtime_ns)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"hourly intensity file {p} cannot be read: {exc}") from None


def co2e_hourly_g(intervals: list[Interval], hourly: Mapping[int, float] | str | Path, *,
                  pue: float = 1.0) -> float:
    """Σ over (t_start_s, t_end_s, energy_j), energy spread evenly in time, × each hour's g/kWh."""
    table = hourly if isinstance(hourly, Mapping) else read_hourly(hourly)
    total = 0.0
    for start, end, energy_j in intervals:
        if end < start:
            raise ValueError(f"interval ends before it starts ({start} > {end})")
        if end == start:
            total += energy_j * _hour_value(table, int(start // S_PER_HOUR))
            continue
        t = start
        while t < end:
            hour = int(t // S_PER_HOUR)
            stop = min(end, (hour + 1) * S_PER_HOUR)
            total += energy_j * (stop - t) / (end - start) * _hour_value(table, hour)
            t = stop
    return total / J_PER_KWH * pue


def _hour_value(hourly: Mapping[int, float], hour: int) -> float:
    if hour in hourly:
        return hourly[hour]
    when = datetime.fromtimestamp(hour * S_PER_HOUR, timezone.utc).isoformat()
    raise ConfigError(f"the hourly intensity file has no row for the hour starting {when}; "
                      "extend it to cover the run")


def _co2e(energy_j: float, inputs: FootprintInputs,
          intervals: list[Interval] | None) -> tuple[float, float, str]:
    """(g CO2e, mean g/kWh, method) by the hourly file, the explicit value, or the table."""
    kwh = energy_j / J_PER_KWH
    if inputs.hourly_csv:
        if intervals is None:
            raise ValueError("an hourly intensity needs the intervals the energy was used in")
        spread_j = sum(e for _, _, e in intervals)
        if not math.isclose(spread_j, energy_j, rel_tol=1e-9, abs_tol=1e-6):
            raise ValueError(f"intervals hold {spread_j} J but energy_j is {energy_j} J")
        g = co2e_hourly_g(intervals, inputs.hourly_csv, pue=inputs.pue)
        mean = g / (kwh * inputs.pue) if kwh else math.nan
        return g, mean, f"hourly:{Path(inputs.hourly_csv).name}"
    if inputs.gco2_per_kwh is not None:
        intensity, how = inputs.gco2_per_kwh, "explicit"
    else:
        row = region_row(inputs.region)
        intensity, how = row.gco2_per_kwh, f"table:{row.region} {row.source} {row.year}"
    return co2e_g(kwh, pue=inputs.pue, intensity_g_per_kwh=intensity), intensity, how


def _grid_water(inputs: FootprintInputs) -> tuple[float, str]:
    if inputs.water_l_per_kwh is not None:
        return inputs.water_l_per_kwh, "explicit"
    row = grid_table().get(inputs.region)
    if row is not None and row.water_l_per_kwh is not None:
        return row.water_l_per_kwh, f"table:{row.region} {row.source}"
    return 0.0, f"grid water intensity unknown for {inputs.region}: on-site WUE only"


def compute_footprint(energy_j: float, inputs: FootprintInputs, gpu_hours: float = 0.0,
                      intervals: list[Interval] | None = None) -> Footprint:
    """CO2e, water and embodied CO2e of `energy_j` (IT energy, before PUE) and `gpu_hours`.

    `intervals` (when the energy was used) are needed only with an hourly intensity file.
    """
    if not (math.isfinite(energy_j) and energy_j >= 0):
        raise ValueError(f"energy_j must be finite and >= 0, got {energy_j}")
    if not (math.isfinite(gpu_hours) and gpu_hours >= 0):
        raise ValueError(f"gpu_hours must be finite and >= 0, got {gpu_hours}")
    kwh = energy_j / J_PER_KWH
    g, intensity, co2e_how = _co2e(energy_j, inputs, intervals)
    grid_water, water_how = _grid_water(inputs)
    return Footprint(
        energy_kwh=kwh,
        co2e_g=g,
        water_l=water_l(kwh, pue=inputs.pue, wue_l_per_kwh=inputs.wue_l_per_kwh,
                        grid_water_l_per_kwh=grid_water),
        embodied_co2e_g=embodied_co2e_g(gpu_hours, per_gpu_kgco2e=inputs.embodied_kg_per_gpu,
                                        lifetime_hours=inputs.lifetime_hours),
        method={"co2e": co2e_how, "water": water_how,
                "embodied": (f"{inputs.embodied_kg_per_gpu:g} kg/GPU over "
                             f"{inputs.lifetime_hours:g} h (assumed)")},
        inputs={"region": inputs.region, "pue": inputs.pue, "gco2_per_kwh": intensity,
                "wue_l_per_kwh": inputs.wue_l_per_kwh, "grid_water_l_per_kwh": grid_water,
                "gpu_hours": gpu_hours},
    )
