"""Data sources: a file, a Hugging Face dataset or the built-in task → rows of one shape.

Every row becomes `{"id": str, "messages": [{"role", "content"}, ...], "response": str | None}`:
the conversation up to the turn the model must write, and the gold answer when the source has
one. Column names are mapped (`data.columns`), or built from several columns with
`data.prompt_template` / `data.response_template`. A `messages` column may hold the whole
conversation (OpenAI `role`/`content` or ShareGPT `from`/`value` turns): its last assistant turn
is then the gold response. Nothing here tokenizes; each model's chat template does that later.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from raydistill.config import DataConfig
from raydistill.errors import ConfigError

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


def is_file_source(source: str) -> bool:
    return source.endswith(FILE_SUFFIXES) or source.startswith(("/", "./", "../", "~"))


def read_records(source: str, cfg: DataConfig, split: str | None = None) -> list[dict]:
    """The raw records of a file, or of a dataset split (`split` or `cfg.hf_split`)."""
    if is_file_source(source):
        return read_file(Path(source).expanduser())
    return read_hub_dataset(source, cfg.subset, split or cfg.hf_split)


def read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ConfigError(f"{path}:{n}: not a JSON object") from None
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ConfigError(f"{path}: a .json data file must hold a list of records")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    raise ConfigError(f"{path}: unknown data file type; valid: {', '.join(FILE_SUFFIXES)}")


def read_hub_dataset(name: str, subset: str, split: str) -> list[dict]:
    """`datasets.load_dataset(name, subset, split=split)`, with an error that says what to do
    when the hub cannot be reached."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("a dataset id needs the `datasets` package: pip install "
                          "raydistill[distill]") from None
    try:
        ds = datasets.load_dataset(name, subset or None, split=split)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"dataset {name!r} (subset {subset or '-'}, split {split}) could not "
                          f"be loaded ({first[:160]}); offline, download it first or point "
                          "data.source at a local .jsonl/.parquet/.csv file") from None
    return [dict(r) for r in ds]


def _turns(value: Any, where: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{where}: messages must be a list of turns, got text") from None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: messages must be a non-empty list of turns")
    turns = []
    for t in value:
        if not isinstance(t, Mapping):
            raise ConfigError(f"{where}: each turn must be a mapping with role and content")
        role = t.get("role", t.get("from"))
        content = t.get("content", t.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            raise ConfigError(f"{where}: a turn needs role/content (or from/value) strings")
        turns.append({"role": ROLE_ALIASES.get(role, role), "content": content})
    return turns


def _field(record: Mapping, cfg: DataConfig, name: str, template: str, where: str) -> Any:
    if template:
        try:
            return template.format(**record)
        except KeyError as exc:
            raise ConfigError(f"{where}: data.{name}_template names column {exc}, which the "
                              f"rows lack; columns: {', '.join(sorted(record))}") from None
    column = cfg.columns.get(name, name)
    return record.get(column)


def normalize(records: Iterable[Mapping], cfg: DataConfig, origin: str) -> list[dict]:
    """Raw records → rows `{id, messages, response}` (see the module docstring)."""
    rows = []
    for i, record in enumerate(records):
        where = f"{origin} row {i}"
        messages = _field(record, cfg, "messages", "", where)
        response = _field(record, cfg, "response", cfg.response_template, where)
        if messages is not None:
            turns = _turns(messages, where)
            if response is None and turns[-1]["role"] == "assistant":
                response = turns.pop()["content"]
        else:
            prompt = _field(record, cfg, "prompt", cfg.prompt_template, where)
            if not isinstance(prompt, str) or not prompt:
                have = ", ".join(sorted(record))
                raise ConfigError(f"{where}: no prompt: map data.columns.prompt (or messages) "
                                  f"to one of the columns: {have}")
            turns = [{"role": "user", "content": prompt}]
        system = _field(record, cfg, "system", "", where) or cfg.system_prompt
        if system and turns[0]["role"] != "system":
            turns = [{"role": "system", "content": str(system)}, *turns]
        if not turns or turns[-1]["role"] == "assistant":
            raise ConfigError(f"{where}: the conversation must end with a turn to answer")
        if response is not None and not isinstance(response, str):
            response = str(response)
        row_id = record.get(cfg.columns.get("id", "id"))
        rows.append({"id": str(row_id) if row_id is not None else f"{origin}:{i}",
                     "messages": turns, "response": response or None})
    return rows


def load_pool(cfg: DataConfig) -> list[dict]:
    """The rows the splits are drawn from (the built-in task makes its own)."""
    if cfg.source == "builtin:chat_tasks":  # the shipped chat JSONL (data/examples)
        from raydistill.data.chat_tasks import example_path

        return normalize(read_file(example_path()), cfg, "chat_tasks")
    if cfg.source.startswith("builtin:"):
        from raydistill.data.addition import addition_records

        if cfg.source != "builtin:addition":
            raise ConfigError(f"data.source {cfg.source!r} unknown; built-in sources: "
                              "builtin:addition, builtin:chat_tasks")
        return normalize(addition_records(cfg.addition.digits, cfg.seed), cfg, "addition")
    return normalize(read_records(cfg.source, cfg), cfg, Path(cfg.source).name)


def load_split_source(cfg: DataConfig, split: str) -> list[dict]:
    """A split read from its own file or dataset split (data.split_sources)."""
    source = str(cfg.split_sources[split])
    if is_file_source(source):
        return normalize(read_file(Path(source).expanduser()), cfg, Path(source).name)
    if cfg.source.startswith("builtin:") or is_file_source(cfg.source):
        raise ConfigError(f"data.split_sources.{split} = {source!r} is a dataset split name, "
                          "but data.source is not a dataset id; give a file path instead")
    return normalize(read_hub_dataset(cfg.source, cfg.subset, source), cfg, f"{split}")
