"""Footprint figures against hand computations; every table row names its source and year."""

import pytest

from raydistill.energy.footprint import (
    J_PER_KWH,
    FootprintInputs,
    co2e_hourly_g,
    compute_footprint,
    grid_table,
)
from raydistill.errors import ConfigError


def test_co2e_is_kwh_times_pue_times_intensity():
    fp = compute_footprint(2 * J_PER_KWH, FootprintInputs(pue=1.5, gco2_per_kwh=400.0))
    assert fp.energy_kwh == 2.0 and fp.co2e_g == pytest.approx(1200.0)
    assert fp.method["co2e"] == "explicit"


def test_region_table_and_water():
    fp = compute_footprint(J_PER_KWH, FootprintInputs(region="US", pue=1.2, wue_l_per_kwh=0.5))
    assert fp.co2e_g == pytest.approx(1.2 * 369)
    assert fp.water_l == pytest.approx(0.5 + 1.2 * 2.18)
    assert fp.method["co2e"].startswith("table:US Ember")


def test_embodied_amortized_over_lifetime():
    fp = compute_footprint(0.0, FootprintInputs(embodied_kg_per_gpu=100.0, lifetime_hours=1000.0),
                           gpu_hours=10.0)
    assert fp.embodied_co2e_g == pytest.approx(1000.0)


def test_hourly_spreads_an_interval_over_the_hours_it_crosses(tmp_path):
    csv = tmp_path / "h.csv"
    csv.write_text("timestamp,gco2_per_kwh\n1970-01-01T00:00:00,100\n1970-01-01T01:00:00,300\n")
    # 1 kWh over [1800 s, 5400 s): half in hour 0 (100 g), half in hour 1 (300 g)
    assert co2e_hourly_g([(1800.0, 5400.0, J_PER_KWH)], {0: 100.0, 1: 300.0}, 1.0) == 200.0
    fp = compute_footprint(J_PER_KWH, FootprintInputs(hourly_csv=str(csv)),
                           intervals=[(1800.0, 5400.0, J_PER_KWH)])
    assert fp.co2e_g == pytest.approx(200.0) and fp.method["co2e"] == "hourly:h.csv"


def test_unknown_region_says_how_to_fix():
    with pytest.raises(ConfigError, match="gco2_per_kwh"):
        compute_footprint(1.0, FootprintInputs(region="Atlantis"))


def test_bad_inputs():
    with pytest.raises(ConfigError, match="pue"):
        FootprintInputs(pue=0.9)


def test_every_row_has_source_and_year():
    for row in grid_table().values():
        assert row.source and 2015 <= row.year <= 2030 and row.gco2_per_kwh > 0
