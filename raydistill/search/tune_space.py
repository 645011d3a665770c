"""A `SearchSpace` as a Ray Tune param_space (the only module of the space that imports Ray)."""

from __future__ import annotations

from raydistill.search.space import SearchSpace


def to_tune(space: SearchSpace, for_optuna: bool = False) -> dict:
    """Flat {dotted name: Tune domain}. A grid becomes `grid_search` for Tune's own generator
    and a `choice` for Optuna, which samples rather than enumerates."""
    from ray import tune

    out: dict = {}
    for p in space.params:
        as_grid = p.kind == "grid" or space.search.algorithm == "grid"
        if p.discrete and as_grid and not for_optuna:
            out[p.name] = tune.grid_search(list(p.values))
        elif p.discrete:
            out[p.name] = tune.choice(list(p.values))
        elif p.kind == "uniform":
            out[p.name] = tune.uniform(p.low, p.high)
        elif p.kind == "loguniform":
            out[p.name] = tune.loguniform(p.low, p.high)
        else:
            out[p.name] = tune.randint(int(p.low), int(p.high) + 1)
    return out
