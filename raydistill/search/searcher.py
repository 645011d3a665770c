"""Tune searchers for a search space (Optuna samplers behind Ray's OptunaSearch)."""

from __future__ import annotations


def make_searcher(space, seed: int):
    algo = space.search.algorithm
    if algo in ("random", "grid"):
        return None  # Tune's BasicVariantGenerator: grid_search points or random draws
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.NSGAIISampler(seed=seed) if algo == "nsga2"
               else optuna.samplers.TPESampler(seed=seed))
    return OptunaSearch(metric=["quality", "energy_j"], mode=["max", "min"], sampler=sampler)
