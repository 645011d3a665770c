"""Torch side of raydistill: losses, teacher stages, the student loop, evaluation.

Kept empty on purpose: `import raydistill.distill` must stay cheap, so each module imports
torch (and transformers, ray) itself, and only when it is used.
"""
