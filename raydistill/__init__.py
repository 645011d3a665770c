"""raydistill: the whole energy bill of distilling a language model, teacher side included.

Importing this package is cheap: it pulls in neither torch nor ray. The pure core
(`raydistill.energy`, `raydistill.pareto`, `raydistill.results`) is plain Python and numpy;
`raydistill.cluster` (Ray) and `raydistill.distill` (torch) are imported only when used.
"""

from raydistill.errors import ConfigError, RayDistillError

__version__ = "0.1.0"
__all__ = ["ConfigError", "RayDistillError", "__version__"]
