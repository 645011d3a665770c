"""Reports from a sweep directory made without Ray: figures match the table, exports parse."""

import pandas as pd
import pytest
import yaml

from raydistill.report.data import load_report_data
from raydistill.report.exports import CODECARBON_COLUMNS
from raydistill.report.figures import energy_by_stage, pareto_frontier, power_over_time
from raydistill.report.html import write_report
from raydistill.report.rules import design_rules
from tests.report_fixture import WATTS, make_sweep_dir


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return make_sweep_dir(tmp_path_factory.mktemp("report"))


def test_energies_and_the_front_are_those_of_the_table(sweep_dir):
    data = load_report_data(sweep_dir)
    # t1: 4 s on n2 (50 W) + 10 s and 2 s on n1 (100 W); t2: 4 s at 100 W + 1 s at 50 W
    e = data.results.groupby("trial_id")["energy_j"].sum()
    assert e["t1"] == pytest.approx(4 * 50 + 12 * 100)
    assert e["t2"] == pytest.approx(4 * 100 + 50)
    assert e["t3"] == pytest.approx(11 * 50)
    # t2 (450 J, 0.6) dominates t3 (550 J, 0.5); t1 is the best and dearest
    assert set(data.pareto_ids) == {"t1", "t2"}
    _, stacked = energy_by_stage(data)
    assert stacked.sum(axis=1)["t1"] == pytest.approx(e["t1"])
    _, front = pareto_frontier(data)
    assert list(front["trial_id"]) == ["t2", "t1"]  # by energy


def test_power_series_is_the_constant_power_of_each_node(sweep_dir):
    _, series = power_over_time(load_report_data(sweep_dir))
    for node, watts in WATTS.items():
        got = series[series["node_id"] == node]["power_w"]
        assert got.to_numpy() == pytest.approx(watts)


def test_design_rules_quote_the_data(sweep_dir):
    rules = design_rules(load_report_data(sweep_dir))
    assert any("largest stage is student_training" in r for r in rules)
    assert any("450.0 J the best trial is t2 (distill.method=sft)" in r for r in rules)


def test_report_is_self_contained_with_every_export(sweep_dir, tmp_path):
    page = write_report(sweep_dir, tmp_path / "out")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    for name in ("energy_by_stage", "pareto", "power", "cumulative"):
        assert f'id="fig-{name}"' in text
        assert (tmp_path / "out" / "figures" / f"{name}.svg").exists()
    emissions = pd.read_csv(tmp_path / "out" / "emissions.csv")
    assert list(emissions.columns) == CODECARBON_COLUMNS
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert emissions["energy_consumed"].sum() == pytest.approx(table["energy_j"].sum() / 3.6e6)
    assert emissions["gpu_energy"].sum() == pytest.approx(emissions["energy_consumed"].sum())
    card = yaml.safe_load((tmp_path / "out" / "model_card_co2.yaml").read_text())
    block = card["co2_eq_emissions"]
    mine = table[table["trial_id"].isin([block["trial"], "setup"])]
    assert block["emissions"] == pytest.approx(mine["co2e_g"].sum())
    assert block["training_type"] in ("pre-training", "fine-tuning")  # the Hub's two values
    assert "distillation" in block["source"]
    assert (tmp_path / "out" / "tables.md").read_text().count("|") > 20


def test_a_directory_without_results_is_rejected(tmp_path):
    from raydistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no results\.parquet"):
        load_report_data(tmp_path)
