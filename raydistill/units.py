"""Numbers as the report prints them (pure): three significant figures, units chosen by size.

The rule, one for every quantity: round to three significant figures first, then print the
value in the largest unit of its kind that it reaches (prefixes step by 1000), so 999.6 J is
"1.00 kJ", not "1000 J", and 201.951376 J is "202 J". Below the smallest unit the value is
printed in it with three figures ("0.500 J", "0.0288 g"); above the largest too ("5,000 GJ").
Zero is "0 J"; NaN and None are `NA`. The units, smallest first:

- energy: J, kJ, MJ, GJ (no kWh, so a table never mixes two systems)
- energy per token: µJ/token, mJ/token, J/token, kJ/token (per-token figures are routinely
  well below a joule, so this one kind starts below its base unit)
- CO2e mass: g, kg, t
- water: L, m³
- time: s, then min (from 60 s) and h (from 3600 s)
- shares: percent, three figures; other numbers: three figures, thousands separated

The report's tables and sentences, the console's progress lines and the run and sweep
summaries all use these (so the module lives in the core, below all of them); exports keep full
precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

NA = "–"
NOT_ESTIMATED = "not estimated"

ENERGY_UNITS = ((1.0, "J"), (1e3, "kJ"), (1e6, "MJ"), (1e9, "GJ"))
PER_TOKEN_UNITS = ((1e-6, "µJ/token"), (1e-3, "mJ/token"), (1.0, "J/token"),
                   (1e3, "kJ/token"))
MASS_UNITS = ((1.0, "g"), (1e3, "kg"), (1e6, "t"))
WATER_UNITS = ((1.0, "L"), (1e3, "m³"))
TIME_UNITS = ((1.0, "s"), (60.0, "min"), (3600.0, "h"))
Formatter = Callable[[Any], str]


def _number(x: Any) -> float | None:
    """x as a finite float, or None (None, NaN, inf, pd.NA, not a number)."""
    if x is None or isinstance(x, bool | str):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def round_sig(x: float, n: int = 3) -> float:
    """x rounded to n significant figures (0 stays 0)."""
    return 0.0 if x == 0 else float(f"{x:.{n - 1}e}")


def fmt_sig(x: Any, n: int = 3) -> str:
    """'202', '1.23', '0.000721', '1,230', '0' (n significant figures, trailing zeros kept:
    '0.900'); an exponent only past 1e15 or below 1e-6; NA for a missing number."""
    v = _number(x)
    if v is None:
        return NA
    if v == 0:
        return "0"
    r = round_sig(v, n)
    if abs(r) >= 1e15 or abs(r) < 1e-6:
        return f"{r:.{n - 1}e}"
    exp = math.floor(math.log10(abs(r)))
    return f"{r:,.{max(n - 1 - exp, 0)}f}"


def unit_for(x: float, units: tuple[tuple[float, str], ...]) -> tuple[float, str]:
    """(factor, name) of the unit `x` (in base units) is printed in: the largest whose factor
    is ≤ |x| after rounding to three figures, the smallest for 0 or tiny values."""
    r = abs(round_sig(x)) if math.isfinite(x) else 0.0
    chosen = units[0]
    for factor, name in units:
        if r >= factor * (1 - 1e-12):
            chosen = (factor, name)
    return chosen


def fmt_quantity(x: Any, units: tuple[tuple[float, str], ...], n: int = 3) -> str:
    v = _number(x)
    if v is None:
        return NA
    if v == 0:
        return f"0 {next((u for f, u in units if f == 1.0), units[0][1])}"
    factor, name = unit_for(v, units)
    return f"{fmt_sig(round_sig(v, n) / factor, n)} {name}"


def fmt_energy_j(x: Any) -> str:
    """'202 J', '1.23 kJ', '4.56 MJ' from joules."""
    return fmt_quantity(x, ENERGY_UNITS)


def fmt_j_per_token(x: Any) -> str:
    """'721 µJ/token', '3.33 J/token' from J per token."""
    return fmt_quantity(x, PER_TOKEN_UNITS)


def fmt_co2e_g(x: Any) -> str:
    """'0.0288 g', '133 g', '1.20 kg' from grams (the caller says 'CO2e')."""
    return fmt_quantity(x, MASS_UNITS)


def fmt_water_l(x: Any) -> str:
    """'0.0120 L', '3.40 L', '1.20 m³' from litres."""
    return fmt_quantity(x, WATER_UNITS)


def fmt_duration_s(x: Any) -> str:
    """'0.500 s', '12.0 s', '2.50 min', '1.20 h' from seconds."""
    return fmt_quantity(x, TIME_UNITS)


def fmt_pct(x: Any) -> str:
    """'6.25%' from a fraction (0.0625)."""
    v = _number(x)
    return NA if v is None else f"{fmt_sig(100 * v)}%"


def fmt_count(x: Any) -> str:
    """'1,234' (a whole number of tokens, trials...)."""
    v = _number(x)
    return NA if v is None else f"{round(v):,}"


def fmt_time(x: Any) -> str:
    """A Unix time as UTC 'YYYY-MM-DD HH:MM:SS'; seconds relative to a run (< 1e8) as a
    duration."""
    v = _number(x)
    if v is None:
        return NA
    if abs(v) < 1e8:
        return fmt_duration_s(v)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v))


def or_not_estimated(fmt: Formatter) -> Formatter:
    """`fmt`, but a missing value reads 'not estimated' (the figure had no inputs), not NA."""
    def inner(x: Any) -> str:
        return NOT_ESTIMATED if _number(x) is None else fmt(x)
    return inner


def fmt_text(x: Any) -> str:
    """A label as it is; NA for a missing one (None, NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return NA
    return str(x)


def column_format(name: str, series: pd.Series) -> tuple[str, Formatter]:
    """(header, formatter) for a column by its name's unit suffix: `_j` energy, `_j_per_token`
    and `j_per_*` per token, `_g` CO2e, `_l` water, `_s` time (`t_*_s` a clock time),
    `_share` percent, `_per_s` a rate; other numbers three figures (whole numbers as counts).
    The unit suffix leaves the header where the cell says it."""
    if name.startswith("j_per_") or "_j_per_" in name:
        return name, fmt_j_per_token
    for suffix, fmt in (("_j", fmt_energy_j), ("_g", fmt_co2e_g), ("_l", fmt_water_l)):
        if name.endswith(suffix):
            return name[: -len(suffix)], fmt
    if name.endswith("_per_s"):  # a rate (tokens_per_s), not a time
        return name, fmt_sig
    if name.endswith("_s"):
        return (name, fmt_time) if name.startswith("t_") else (name[:-2], fmt_duration_s)
    if name.endswith("_share"):
        return name, fmt_pct
    if pd.api.types.is_bool_dtype(series):
        return name, fmt_text
    if pd.api.types.is_integer_dtype(series):
        return name, fmt_count
    if pd.api.types.is_float_dtype(series):
        return name, fmt_sig
    return name, lambda x: fmt_sig(x) if isinstance(x, float) else fmt_text(x)


def display_frame(frame: pd.DataFrame,
                  spec: Mapping[str, tuple[str, Formatter]] | None = None) -> pd.DataFrame:
    """`frame` as strings for a table: each column by `spec` (header, formatter) where given,
    else by `column_format`. A header that would collide with another keeps its name."""
    spec = spec or {}
    out, used = {}, set()
    for name in frame.columns:
        header, fmt = spec.get(name) or column_format(str(name), frame[name])
        if header in used or (header != name and header in frame.columns):
            header = str(name)
        used.add(header)
        out[header] = [fmt(v) for v in frame[name]]
    return pd.DataFrame(out, index=frame.index, columns=list(out))
