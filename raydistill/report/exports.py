"""Formats other tools read: CodeCarbon's emissions.csv and a Hugging Face model-card block."""

from __future__ import annotations

import platform
import time

import pandas as pd
import yaml

from raydistill.report.data import ReportData

# CodeCarbon's EmissionsData fields, in its order (codecarbon/output_methods/emissions_data.py)
CODECARBON_COLUMNS = [
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions",
    "emissions_rate", "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy",
    "ram_energy", "energy_consumed", "water_consumed", "country_name", "country_iso_code",
    "region", "cloud_provider", "cloud_region", "os", "python_version", "codecarbon_version",
    "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude", "latitude",
    "ram_total_size", "tracking_mode", "cpu_utilization_percent", "gpu_utilization_percent",
    "ram_utilization_percent", "ram_used_gb", "on_cloud", "pue", "wue",
]
J_PER_KWH = 3.6e6


def emissions_frame(data: ReportData) -> pd.DataFrame:
    """One row per trial × stage (experiment_id = trial, run_id = stage), CodeCarbon's units:
    duration s, emissions kg CO2e, energy kWh, mean power W, water L; energy split into CPU, GPU
    and RAM columns by the ledger's device kinds (CPU estimates and node-level readings count as
    CPU)."""
    region = data.config.get("footprint", {}).get("region", "WORLD")
    pue = data.config.get("footprint", {}).get("pue", 1.0)
    rows = []
    for r in data.results.itertuples():
        kinds = data.kind_energy.get((r.trial_id, r.stage), {})
        gpu_j = kinds.get("gpu", 0.0)
        ram_j = kinds.get("dram", 0.0)
        cpu_j = r.energy_j - gpu_j - ram_j  # cpu package, node-level and estimated devices
        kwh = r.energy_j / J_PER_KWH
        dur = max(float(r.duration_s), 1e-9)
        row = dict.fromkeys(CODECARBON_COLUMNS, "")
        row.update({
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.t_end_s)),
            "project_name": "raydistill", "run_id": r.stage, "experiment_id": r.trial_id,
            "duration": dur, "emissions": r.co2e_g / 1000.0,
            "emissions_rate": r.co2e_g / 1000.0 / dur,
            "cpu_power": cpu_j / dur, "gpu_power": gpu_j / dur, "ram_power": ram_j / dur,
            "cpu_energy": cpu_j / J_PER_KWH, "gpu_energy": gpu_j / J_PER_KWH,
            "ram_energy": ram_j / J_PER_KWH, "energy_consumed": kwh, "water_consumed": r.water_l,
            "region": region, "country_iso_code": region if len(region) == 3 else "",
            "os": platform.platform(), "python_version": platform.python_version(),
            "codecarbon_version": f"raydistill ({r.energy_method})",
            "tracking_mode": "machine", "on_cloud": "N", "pue": pue,
            "wue": data.config.get("footprint", {}).get("wue_l_per_kwh", 0.0),
        })
        rows.append(row)
    return pd.DataFrame(rows, columns=CODECARBON_COLUMNS)


def model_card_co2(data: ReportData, trial_id: str | None = None) -> dict:
    """The `co2_eq_emissions` block of a Hugging Face model card for the distilled student:
    every stage of its trial (teacher side included) plus the shared setup."""
    r = data.results[~data.results["stage"].str.startswith("inference_")]
    trial = trial_id or (data.pareto_ids[0] if data.pareto_ids else r["trial_id"].iloc[0])
    mine = r[r["trial_id"].isin([trial, "setup"])]
    region = data.config.get("footprint", {}).get("region", "WORLD")
    methods = sorted(set("+".join(mine["energy_method"]).split("+")))
    return {"co2_eq_emissions": {
        "emissions": float(mine["co2e_g"].sum()),  # grams, as the model card expects
        "source": f"raydistill ledger ({', '.join(methods)}); intensity "
                  f"{mine['co2e_method'].iloc[0] if len(mine) else 'n/a'}; knowledge "
                  f"distillation, teacher-side work included",
        # the Hub's model-card spec allows only these two values; distillation fine-tunes
        "training_type": "fine-tuning",
        "geographical_location": region,
        "hardware_used": f"{int(mine['devices'].max()) if len(mine) else 0} device(s) per stage",
        "trial": trial,
        "energy_kwh": float(mine["energy_j"].sum() / J_PER_KWH),
    }}


def model_card_yaml(data: ReportData) -> str:
    return yaml.safe_dump(model_card_co2(data), sort_keys=False)
