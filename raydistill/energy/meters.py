"""Which meter measured a figure, and how much of its stated error is that meter's common bias
(pure: pandas only).

A ledger row's stated error (energy.accuracy.row_error_j) is split in two:

- its *bias*: the error class's relative error on long windows × |energy|, keyed by the meter
  `node:device:class` (the class of the row's worst measured method). One meter errs the same
  way in every figure it makes, so two figures of the same meter share this part
  (raydistill.intervals.Figure: it cancels in their difference and ratio);
  A sensor's bias does not depend on the work it measures; a model's does (a TDP ×
  utilisation estimate, AMD's modelled RAPL: its error depends on how the load uses the chip),
  so a model's meter is keyed by the stage too (`node:device:class:stage`): two students'
  training on one estimate share it, the teacher's generation and a student's training do not;
- the *independent* rest: the edge term of a short window, power held over gaps, the bound on
  energy nobody measured. Rows' independent parts combine in quadrature.

The two always sum to the row's stated error, so a figure's bias + independent never exceeds
what was stated for it.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from raydistill.energy.accuracy import UNKNOWN, error_class, methods_of

# Columns the results table gains per trial × stage (see `meter_columns`).
METER_COLUMNS = ("meter", "bias_j", "bias_parts", "independent_j")
_NOT_A_METER = frozenset({"interpolated", "unmeasured"})


_WORKLOAD_DEPENDENT = frozenset({"estimated", "modelled", "unknown"})


def row_meter(method: object, node_id: object, device_id: object, device_kind: object,
              device_model: object, workload: object = "") -> tuple[str, float]:
    """(meter key, relative bias) of one row: the worst class among its measured methods (held
    power and unmeasured time are no meter's bias; they stay independent). A model's meter is
    keyed by the row's `workload` (its stage) as well: its bias follows the load."""
    names = methods_of(method)
    measured = [m for m in names if m not in _NOT_A_METER]
    classes = [error_class(m, str(device_kind or ""), str(device_model or ""))
               for m in measured] or ([] if names else [UNKNOWN])
    if not classes:  # only held or unmeasured energy: nothing of it is a meter's bias
        return f"{node_id}:{device_id}:none", 0.0
    worst = max(classes, key=lambda c: c.relative)
    key = f"{node_id}:{device_id}:{worst.name}"
    if worst.name in _WORKLOAD_DEPENDENT and workload:
        key += f":{workload}"
    return key, worst.relative


def split_error(row: dict) -> tuple[str, float, float]:
    """(meter key, bias J, independent J) of one ledger row (an EnergyRow's fields): the bias
    is its class's relative error × |energy|, never more than its stated error less its
    unmeasured bound (which stays independent); the rest of the stated error is independent."""
    key, rel = row_meter(row.get("method"), row.get("node_id"), row.get("device_id"),
                         row.get("device_kind"), row.get("device_model") or "",
                         row.get("stage") or "")
    stated = _number(row.get("stated_error_j"))
    bound = max(_number(row.get("unmeasured_max_j")), 0.0)
    bias = min(rel * abs(_number(row.get("energy_j"))), max(stated - bound, 0.0))
    return key, bias, max(stated - bias, 0.0)


def _number(x: object) -> float:
    """A float, 0 for a missing one (None, NaN)."""
    return 0.0 if x is None or pd.isna(x) else float(x)


def row_parts(frame: pd.DataFrame) -> pd.DataFrame:
    """Each ledger row's meter key, bias (J) and independent part (J) (`split_error`); `frame`
    as results.energy_frame gives it (stated_error_j filled)."""
    parts = [split_error(r) for r in frame.to_dict("records")]
    return frame.assign(meter=[p[0] for p in parts], bias_j=[p[1] for p in parts],
                        independent_j=[p[2] for p in parts])


def meter_columns(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys` (trial × stage): `meter` (the sorted, '+'-joined meter keys that
    measured it: equal strings, same meters), `bias_j` (the sum of its biases), `bias_parts`
    (JSON {meter: bias J}) and `independent_j` (its rows' independent parts in quadrature)."""
    parts = row_parts(frame)
    out = []
    for group, rows in parts.groupby(keys, sort=False):
        per_meter = rows.groupby("meter")["bias_j"].sum().to_dict()
        out.append({**dict(zip(keys, group, strict=True)),
                    "meter": "+".join(sorted(per_meter)), "bias_j": float(sum(per_meter.values())),
                    "bias_parts": json.dumps({k: float(v) for k, v in sorted(per_meter.items())}),
                    "independent_j": float(math.sqrt((rows["independent_j"] ** 2).sum()))})
    return pd.DataFrame(out, columns=[*keys, *METER_COLUMNS])


def has_meters(table: pd.DataFrame) -> bool:
    """Whether a results table carries the meter decomposition (tables from before it do not:
    their errors fall back to the stated ones, added linearly)."""
    return all(c in table.columns for c in ("bias_parts", "independent_j"))


def parts_of(value: object) -> dict[str, float]:
    """A `bias_parts` cell as a dict ({} for a missing one)."""
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, str) and value:
        return {str(k): float(v) for k, v in json.loads(value).items()}
    return {}
