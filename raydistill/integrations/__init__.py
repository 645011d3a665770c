"""Integrations with the tools a distillation script already uses (each imported on its own:
`raydistill.integrations.hf` needs transformers)."""
