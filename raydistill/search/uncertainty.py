"""Figures with their uncertainty: kept importable here; the arithmetic lives in
raydistill.intervals (a lower, pure layer that raydistill.results uses too)."""

from raydistill.intervals import (  # noqa: F401
    DISTINGUISHABLE,
    NEVER,
    NOT_DISTINGUISHABLE,
    Figure,
    Interval,
    Ratio,
    combine_errors,
    difference,
    distinguishable,
    figure_ratio,
    figure_sum,
    fmt_interval,
    fmt_number,
    fmt_ratio,
    mean_of_figures,
    mean_of_repeats,
    ratio_bounds,
    spread_95,
    standard_error,
    t_quantile_95,
    total,
)
