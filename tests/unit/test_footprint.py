"""Footprint figures against hand computations; every table row names its source and year."""

import csv
from importlib import resources

import pytest

from raydistill.energy.footprint import (
    EMBODIED_KG_PER_GPU,
    J_PER_KWH,
    LIFETIME_HOURS,
    FootprintInputs,
    co2e_g,
    co2e_hourly_g,
    compute_footprint,
    embodied_co2e_g,
    grid_table,
    read_hourly,
    water_l,
)
from raydistill.errors import ConfigError


def test_co2e_is_kwh_times_pue_times_intensity():
    assert co2e_g(2.0, pue=1.5, intensity_g_per_kwh=400.0) == 1200.0
    fp = compute_footprint(2 * J_PER_KWH, FootprintInputs(pue=1.5, gco2_per_kwh=400.0))
    assert fp.energy_kwh == 2.0 and fp.co2e_g == pytest.approx(1200.0)
    assert fp.method["co2e"] == "explicit" and fp.inputs["gco2_per_kwh"] == 400.0


def test_explicit_intensity_needs_no_known_region():
    fp = compute_footprint(J_PER_KWH, FootprintInputs(region="my-lab", gco2_per_kwh=100.0))
    assert fp.co2e_g == 100.0 and fp.method["water"].startswith("grid water intensity unknown")


def test_region_table_and_water():
    us = grid_table()["US"]
    fp = compute_footprint(J_PER_KWH, FootprintInputs(region="US", pue=1.2, wue_l_per_kwh=0.5))
    assert fp.co2e_g == pytest.approx(1.2 * us.gco2_per_kwh)
    assert fp.water_l == pytest.approx(0.5 + 1.2 * us.water_l_per_kwh)
    assert fp.method["co2e"] == f"table:US {us.source} {us.year}"
    assert fp.method["water"].startswith("table:US")
    # 3 kWh, WUE 0.2 L/kWh on site, PUE 1.5, grid 2 L/kWh: 0.6 + 9 = 9.6 L
    assert water_l(3.0, pue=1.5, wue_l_per_kwh=0.2, grid_water_l_per_kwh=2.0) == 9.6


def test_water_empty_in_table_means_on_site_only_and_override_wins():
    assert grid_table()["FR"].water_l_per_kwh is None
    fp = compute_footprint(2 * J_PER_KWH, FootprintInputs(region="FR", wue_l_per_kwh=1.8))
    assert fp.water_l == pytest.approx(3.6) and "unknown" in fp.method["water"]
    fp = compute_footprint(2 * J_PER_KWH, FootprintInputs(region="FR", pue=1.25,
                                                          water_l_per_kwh=4.0))
    assert fp.water_l == pytest.approx(2 * 1.25 * 4.0) and fp.method["water"] == "explicit"


def test_embodied_amortized_over_lifetime():
    assert embodied_co2e_g(10.0, per_gpu_kgco2e=100.0, lifetime_hours=1000.0) == 1000.0
    fp = compute_footprint(0.0, FootprintInputs(embodied_kg_per_gpu=100.0, lifetime_hours=1000.0),
                           gpu_hours=10.0)
    assert fp.embodied_co2e_g == pytest.approx(1000.0) and "assumed" in fp.method["embodied"]


def test_embodied_defaults_reproduce_the_bloom_estimate():
    # Luccioni et al. 2023: 11.2 t CO2e embodied for 1,082,990 GPU-hours
    assert EMBODIED_KG_PER_GPU == 462.5
    assert round(LIFETIME_HOURS, 6) == 44_676.0
    assert embodied_co2e_g(1_082_990) / 1e6 == pytest.approx(11.2, abs=0.05)


def test_hourly_spreads_an_interval_over_the_hours_it_crosses(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("timestamp,gco2_per_kwh\n1970-01-01T00:00:00,100\n"
                    "1970-01-01T01:00:00Z,300\n1970-01-01T02:00:00+00:00,50\n")
    # 1 kWh over [1800 s, 5400 s): half in hour 0 (100 g), half in hour 1 (300 g)
    assert co2e_hourly_g([(1800.0, 5400.0, J_PER_KWH)], {0: 100.0, 1: 300.0}) == 200.0
    # 3 kWh over [0, 9000 s): 1.2 kWh in hour 0, 1.2 in hour 1, 0.6 in hour 2, × PUE 2
    assert co2e_hourly_g([(0.0, 9000.0, 3 * J_PER_KWH)], path, pue=2.0) == pytest.approx(
        2 * (1.2 * 100 + 1.2 * 300 + 0.6 * 50))
    fp = compute_footprint(J_PER_KWH, FootprintInputs(hourly_csv=str(path)),
                           intervals=[(1800.0, 5400.0, J_PER_KWH)])
    assert fp.co2e_g == pytest.approx(200.0) and fp.method["co2e"] == "hourly:h.csv"
    assert fp.inputs["gco2_per_kwh"] == pytest.approx(200.0)  # the energy-weighted mean


def test_hourly_zone_offsets_and_subhourly_rows(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("timestamp,gco2_per_kwh\n1970-01-01T02:00:00+02:00,100\n"
                    "1970-01-01T00:30:00,300\n")
    assert read_hourly(path) == {0: 200.0}  # both rows fall in hour 0 (UTC): averaged


def test_hourly_errors_name_the_file_and_fix(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("timestamp,gco2_per_kwh\n1970-01-01T00:00:00,100\nyesterday,5\n")
    with pytest.raises(ConfigError, match=r"h\.csv line 3"):
        FootprintInputs(hourly_csv=str(path))
    with pytest.raises(ConfigError, match="not found"):
        FootprintInputs(hourly_csv=str(tmp_path / "missing.csv"))
    path.write_text("timestamp,gco2_per_kwh\n1970-01-01T00:00:00,100\n")
    with pytest.raises(ConfigError, match="no row for the hour starting 1970-01-01T01"):
        compute_footprint(J_PER_KWH, FootprintInputs(hourly_csv=str(path)),
                          intervals=[(1800.0, 5400.0, J_PER_KWH)])
    with pytest.raises(ValueError, match="intervals"):
        compute_footprint(J_PER_KWH, FootprintInputs(hourly_csv=str(path)))


def test_unknown_region_says_how_to_fix():
    with pytest.raises(ConfigError, match=r"known: .*FR.*gco2_per_kwh"):
        FootprintInputs(region="Atlantis")


@pytest.mark.parametrize("kwargs,msg", [
    ({"pue": 0.9}, "pue"), ({"pue": float("nan")}, "pue"), ({"gco2_per_kwh": -1.0}, "gco2"),
    ({"wue_l_per_kwh": -0.1}, "wue"), ({"lifetime_hours": 0.0}, "lifetime"),
    ({"embodied_kg_per_gpu": -5.0}, "embodied"),
])
def test_bad_inputs(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        FootprintInputs(**kwargs)


def test_negative_energy_is_a_bug_not_input():
    with pytest.raises(ValueError, match="energy_j"):
        compute_footprint(-1.0, FootprintInputs())


def test_every_row_has_source_and_year():
    text = resources.files("raydistill").joinpath("data/grid_intensity.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["region", "gco2_per_kwh", "water_l_per_kwh", "source", "year"]
    assert all(len(r) == 5 for r in rows), "a comma inside a source? quote it"
    table = grid_table()
    assert len(table) == len(rows) - 1 >= 20
    for row in table.values():
        assert row.source.strip() and 2015 <= row.year <= 2030
        assert 0 < row.gco2_per_kwh < 1200
        assert row.water_l_per_kwh is None or 0 < row.water_l_per_kwh < 20
    assert {"WORLD", "US", "FR", "DE", "GB", "CN", "IN", "JP", "SE", "NO"} <= set(table)
