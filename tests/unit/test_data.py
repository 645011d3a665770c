"""The data layer: sources (files, hub datasets, the built-in task) → rows of one shape, seeded
disjoint splits written atomically, and one way of rendering prompts and responses for every
tokenizer (real Qwen2 / Llama-3 chat templates, and the built-in task's byte tokenizer)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from raydistill.config import DEFAULT_SPLITS, SPLITS, AdditionConfig, DataConfig
from raydistill.data.addition import addition_records
from raydistill.data.format import (
    answer_of,
    check_vocabulary,
    encode,
    prompt_ids,
    render_prompt,
    response_ids,
    stop_ids,
)
from raydistill.data.local_models import make_local_models
from raydistill.data.sources import load_pool, load_split_source, normalize, read_file
from raydistill.data.splits import (
    FILES,
    draw_splits,
    make_splits,
    planned_count,
    read_rows,
    write_splits,
)
from raydistill.errors import ConfigError

QA = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(10)
      for b in range(10)]  # 100 rows with distinct prompts


def cfg_for(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_table(path: Path, rows: list[dict]) -> Path:
    """rows as a file of the type its suffix names."""
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
        return path
    if path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    raise AssertionError(path)


def user(text):
    return {"role": "user", "content": text}


def ids_of(rows):
    return [r["id"] for r in rows]


def pool_of(n, *, gold=lambda i: True):
    """n normalised rows, `gold(i)` deciding which have a response."""
    return [{"id": f"r{i}", "messages": [user(f"q{i}")], "response": f"a{i}" if gold(i) else None}
            for i in range(n)]


# ---- sources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_prompt_response_files_of_every_type(tmp_path, suffix):
    rows = [{"prompt": f"{a}+{a}=", "response": str(2 * a)} for a in range(5)]
    path = write_table(tmp_path / f"data{suffix}", rows)
    pool = load_pool(cfg_for(path))
    assert [r["messages"] for r in pool] == [[user(r["prompt"])] for r in rows]
    assert [r["response"] for r in pool] == [r["response"] for r in rows]
    assert ids_of(pool) == [f"data{suffix}:{i}" for i in range(5)]  # no id column: file:row


def test_column_mapping_and_non_text_responses(tmp_path):
    rows = [{"uid": f"u{i}", "q": f"Q{i}?", "a": i} for i in range(3)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    pool = load_pool(cfg_for(path, columns={"prompt": "q", "response": "a", "id": "uid"}))
    assert pool == [{"id": f"u{i}", "messages": [user(f"Q{i}?")], "response": str(i)}
                    for i in range(3)]


def test_prompt_and_response_templates_build_from_several_columns(tmp_path):
    rows = [{"question": "Why?", "context": "Because.", "rationale": "think", "answer": "42"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = cfg_for(path, prompt_template="Context: {context}\nQuestion: {question}",
                  response_template="{rationale}\n#### {answer}")
    (row,) = load_pool(cfg)
    assert row["messages"] == [user("Context: Because.\nQuestion: Why?")]
    assert row["response"] == "think\n#### 42"
    bad = cfg_for(path, prompt_template="Q: {query}")
    with pytest.raises(ConfigError, match=r"prompt_template names column 'query'.*question"):
        load_pool(bad)


OPENAI = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}]
SHAREGPT = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_messages_column_last_assistant_turn_is_the_response(tmp_path, suffix):
    path = write_table(tmp_path / f"chat{suffix}", [{"conversation": OPENAI}])
    (row,) = load_pool(cfg_for(path, columns={"messages": "conversation"}))
    assert row["messages"] == OPENAI[:-1] and row["response"] == "4"


def test_sharegpt_turns_and_messages_as_json_text(tmp_path):
    expected = [user("Hi"), {"role": "assistant", "content": "Hello."}, user("2+2?")]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"messages": SHAREGPT}])
    (row,) = load_pool(cfg_for(path))
    assert row["messages"] == expected and row["response"] == "4"
    path = write_table(tmp_path / "chat.csv", [{"messages": json.dumps(SHAREGPT)}])
    (row,) = load_pool(cfg_for(path))  # a CSV cell holds the conversation as JSON
    assert row["messages"] == expected and row["response"] == "4"


def test_messages_ending_with_a_user_turn_have_no_gold(tmp_path):
    path = write_jsonl(tmp_path / "open.jsonl", [{"messages": SHAREGPT[:3]}])
    (row,) = load_pool(cfg_for(path))
    assert row["messages"][-1] == user("2+2?") and row["response"] is None


def test_system_prompt_prepended_unless_the_row_has_one(tmp_path):
    rows = [{"prompt": "Hi", "response": "Hello"},
            {"prompt": "Yo", "response": "Hey", "system": "Be loud."},
            {"messages": OPENAI}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    a, b, c = load_pool(cfg_for(path, system_prompt="Be kind."))
    assert a["messages"] == [{"role": "system", "content": "Be kind."}, user("Hi")]
    assert b["messages"] == [{"role": "system", "content": "Be loud."}, user("Yo")]
    assert c["messages"][0] == {"role": "system", "content": "Be terse."}  # its own kept
    assert [m["role"] for m in c["messages"]].count("system") == 1


def test_missing_file_and_column_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="data file not found") as exc:
        load_pool(cfg_for(tmp_path / "nope.jsonl"))
    assert "\n" not in str(exc.value)
    path = write_jsonl(tmp_path / "qa.jsonl", QA[:3])
    with pytest.raises(ConfigError, match=r"no prompt: map data\.columns\.prompt.*answer, "
                                          r"question") as exc:
        load_pool(cfg_for(path))
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="messages must be a non-empty list"):
        normalize([{"messages": []}], DataConfig(), "x")
    with pytest.raises(ConfigError, match="role/content"):
        normalize([{"messages": [{"speaker": "a", "text": "b"}]}], DataConfig(), "x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: not a JSON object"):
        read_file(bad)


def test_unreachable_dataset_id_says_what_to_do(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/nothing' on the Hub (LocalEntryNotFound)\n"
                              "traceback detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError) as exc:
        load_pool(cfg_for("org/nothing", subset="main"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "'org/nothing'" in msg and "subset main" in msg and "split train" in msg
    assert "Couldn't reach" in msg and "data.source" in msg and "local" in msg


def test_hub_dataset_and_its_own_test_split(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake(name, subset, split):
        calls.append((name, subset, split))
        n = {"train": 60, "test": 30}[split]
        return [{"question": f"{split} {i}", "answer": f"{i} #### {i}"} for i in range(n)]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = cfg_for("org/gsm", subset="main", columns={"prompt": "question", "response": "answer"},
                  split_sources={"test": "test"},
                  splits={"test": 20, "dev": 10, "labelled": 10, "train": "rest"})
    splits = make_splits(cfg, tmp_path / "data")
    assert sorted(calls) == [("org/gsm", "main", "test"), ("org/gsm", "main", "train")]
    test = read_rows(splits["test"])
    assert len(test) == 20 and all(r["messages"][0]["content"].startswith("test ") for r in test)
    others = [r for s in ("dev", "labelled", "train") for r in read_rows(splits[s])]
    assert len(others) == 60 and all(r["messages"][0]["content"].startswith("train ")
                                     for r in others)


def test_unknown_builtin_source():
    with pytest.raises(ConfigError, match="builtin:addition"):
        load_pool(cfg_for("builtin:subtraction"))


def test_builtin_addition_records():
    rows = addition_records(2, seed=0)
    assert len(rows) == 100 * 100 and len({r["id"] for r in rows}) == len(rows)
    assert rows == addition_records(2, seed=0) and rows != addition_records(2, seed=1)
    for r in rows[:50]:
        a, b = map(int, r["prompt"].rstrip("=").split("+"))
        assert r["response"] == str(a + b)[::-1]  # ones digit first
    pool = load_pool(DataConfig(addition=AdditionConfig(digits=1)))
    assert len(pool) == 100
    assert pool[0]["messages"] == [user(pool[0]["id"] + "=")] and pool[0]["response"]
    with pytest.raises(ConfigError, match=r"data\.addition\.digits=4"):
        addition_records(4, seed=0)


# ---- splits -----------------------------------------------------------------------------------


def small(**splits) -> DataConfig:
    return DataConfig(source="pool.jsonl", splits={"test": 0, "dev": 0, "labelled": 0,
                                                   "train": 0, **splits})


def test_split_sizes_disjoint_and_teacher_outside_dev_and_test():
    pool = pool_of(100)
    out = draw_splits(pool, small(test=10, dev=5, labelled=20, train=30))
    assert {s: len(out[s]) for s in SPLITS} == {"test": 10, "dev": 5, "labelled": 20, "train": 30}
    seen = [i for s in SPLITS for i in ids_of(out[s])]
    assert len(seen) == len(set(seen)) == 65
    held = set(ids_of(out["test"])) | set(ids_of(out["dev"]))
    assert set(ids_of(out["teacher"])) == {r["id"] for r in pool} - held
    rest = draw_splits(pool, small(test=10, dev=5, labelled=20, train="rest"))
    assert len(rest["train"]) == 65
    frac = draw_splits(pool, small(test=0.1, dev=0.05, labelled=0.2, train="rest"))
    assert [len(frac[s]) for s in SPLITS] == [10, 5, 20, 65]


def test_unnamed_splits_take_the_defaults():
    assert DataConfig(splits={"train": 7}).splits == {**DEFAULT_SPLITS, "train": 7}


def test_same_seed_same_splits_other_seed_other_splits():
    pool = pool_of(100)
    a = draw_splits(pool, small(test=10, train=20))
    assert a == draw_splits(pool, small(test=10, train=20))
    other = DataConfig(source="pool.jsonl", seed=1,
                       splits={"test": 10, "dev": 0, "labelled": 0, "train": 20})
    assert ids_of(draw_splits(pool, other)["test"]) != ids_of(a["test"])
    assert ids_of(a["test"]) != ids_of(pool[:10])  # shuffled, not the file's first rows


def test_test_split_unchanged_when_train_or_labelled_grows():
    pool = pool_of(200)
    base = draw_splits(pool, small(test=20, dev=10, labelled=10, train=20))
    more_train = draw_splits(pool, small(test=20, dev=10, labelled=10, train=150))
    more_labelled = draw_splits(pool, small(test=20, dev=10, labelled=60, train="rest"))
    for grown in (more_train, more_labelled):
        assert grown["test"] == base["test"] and grown["dev"] == base["dev"]
    assert more_train["labelled"] == base["labelled"]
    assert more_train["train"][:20] == base["train"]  # the old train rows, then new ones


def test_rows_without_responses_only_go_to_train():
    pool = pool_of(100, gold=lambda i: i % 2 == 0)  # 50 gold, 50 prompts only
    out = draw_splits(pool, small(test=10, dev=10, labelled=20, train="rest"))
    for s in ("test", "dev", "labelled", "teacher"):
        assert all(r["response"] is not None for r in out[s]), s
    assert len(out["train"]) == 60
    assert sum(r["response"] is None for r in out["train"]) == 50
    with pytest.raises(ConfigError, match=r"data\.splits\.labelled asks for 40 rows but only 30 "
                                          r"rows with a gold response are left"):
        draw_splits(pool, small(test=10, dev=10, labelled=40))


def test_seeded_sample_before_splitting():
    pool = pool_of(500)
    cfg = DataConfig(source="pool.jsonl", sample=50,
                     splits={"test": 10, "dev": 5, "labelled": 5, "train": "rest"})
    out = draw_splits(pool, cfg)
    assert [len(out[s]) for s in SPLITS] == [10, 5, 5, 30] and len(out["teacher"]) == 35
    assert out == draw_splits(pool, cfg)
    resampled = draw_splits(pool, dataclasses.replace(cfg, seed=5))
    assert set(ids_of(resampled["train"])) != set(ids_of(out["train"]))


def test_too_few_rows_and_nothing_to_train_on():
    with pytest.raises(ConfigError, match=r"data\.splits\.test asks for 300 rows but only 40") \
            as exc:
        draw_splits(pool_of(40), DataConfig(source="tiny.jsonl"))
    assert "tiny.jsonl" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="nothing to train on"):
        draw_splits(pool_of(40), small(test=10))


def test_split_sources_from_a_file(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(80)])
    test = write_jsonl(tmp_path / "held.jsonl",
                       [{"prompt": f"t{i}", "response": f"s{i}"} for i in range(30)])
    cfg = DataConfig(source=str(pool), split_sources={"test": str(test)},
                     splits={"test": 25, "dev": 10, "labelled": 10, "train": "rest"})
    splits = make_splits(cfg, tmp_path / "data")
    rows = {s: read_rows(splits[s]) for s in FILES}
    assert len(rows["test"]) == 25
    assert all(r["messages"][0]["content"].startswith("t") for r in rows["test"])
    pool_prompts = [r["messages"][0]["content"] for s in ("dev", "labelled", "train")
                    for r in rows[s]]
    assert len(pool_prompts) == 80 and all(p.startswith("p") for p in pool_prompts)
    assert not {r["id"] for r in rows["teacher"]} & {r["id"] for r in rows["test"] + rows["dev"]}
    assert len(rows["teacher"]) == 70
    hub_name = DataConfig(source=str(pool), split_sources={"test": "validation"})
    with pytest.raises(ConfigError, match=r"split_sources\.test = 'validation' is a dataset split"):
        load_split_source(hub_name, "test")


def test_own_test_split_without_gold_is_refused(tmp_path):
    """Test, dev and labelled need gold responses, also when read from their own source (a
    test row without one cannot be scored)."""
    pool = pool_of(50)
    own = [{"id": f"t{i}", "messages": [user(f"t{i}")], "response": None} for i in range(10)]
    with pytest.raises(ConfigError, match=r"data\.split_sources\.test.*gold response"):
        draw_splits(pool, small(test=5, train=10), {"test": own})
    own[0]["response"] = "x"
    with pytest.raises(ConfigError, match=r"data\.split_sources\.test"):
        draw_splits(pool, small(test=5, train=10), {"test": own})
    train_only = draw_splits(pool, small(test=5, train=10), {"train": own})  # train needs none
    assert len(train_only["train"]) == 10


def test_write_splits_digests_are_stable_content_addresses(tmp_path):
    pool = pool_of(60)
    splits = draw_splits(pool, small(test=10, dev=5, labelled=5, train="rest"))
    a = write_splits(splits, tmp_path / "a")
    assert set(a.paths) == set(FILES) == {*SPLITS, "teacher"}
    for name in FILES:
        data = a[name].read_bytes()
        assert a.digests[name] == hashlib.sha256(data).hexdigest()[:16]
        assert read_rows(a[name]) == splits[name] and a.counts[name] == len(splits[name])
    reordered = {k: [dict(reversed(list(r.items()))) for r in v] for k, v in splits.items()}
    b = write_splits(reordered, tmp_path / "b")
    assert b.digests == a.digests  # same rows, same bytes, whatever the key order
    manifest = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert manifest == {"counts": a.counts, "sha256": a.digests}
    grown = draw_splits(pool, small(test=10, dev=5, labelled=5, train=20))
    c = write_splits(grown, tmp_path / "c")
    assert c.digests["test"] == a.digests["test"] and c.digests["train"] != a.digests["train"]


def test_write_splits_is_atomic_per_file(tmp_path, monkeypatch):
    import raydistill.io

    out = tmp_path / "data"
    old = write_splits(draw_splits(pool_of(60), small(test=10, train=20)), out)
    before = {n: old[n].read_text() for n in FILES}
    new_splits = draw_splits(pool_of(60), DataConfig(
        source="x.jsonl", seed=3, splits={"test": 10, "dev": 0, "labelled": 0, "train": 20}))
    real = raydistill.io.os.replace

    def fail_on_labelled(src, dst):
        if Path(dst).name == "labelled.jsonl":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(raydistill.io.os, "replace", fail_on_labelled)
    with pytest.raises(OSError, match="No space"):
        write_splits(new_splits, out)
    monkeypatch.undo()
    assert read_rows(out / "test.jsonl") == new_splits["test"]  # written whole, before
    assert (out / "labelled.jsonl").read_text() == before["labelled"]  # untouched
    assert (out / "train.jsonl").read_text() == before["train"]  # never reached
    assert json.loads((out / "splits.json").read_text())["sha256"] == old.digests
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_make_splits_builtin_addition(tmp_path):
    cfg = DataConfig(splits={"test": 30, "dev": 10, "labelled": 20, "train": 40})
    splits = make_splits(cfg, tmp_path / "d")
    assert splits.counts == {"test": 30, "dev": 10, "labelled": 20, "train": 40,
                             "teacher": 10_000 - 40}
    row = read_rows(splits["test"])[0]
    assert set(row) == {"id", "messages", "response"} and row["messages"][0]["role"] == "user"
    assert make_splits(cfg, tmp_path / "e").digests == splits.digests


def test_planned_count():
    assert planned_count(DataConfig(), "train") == 4000.0
    assert planned_count(DataConfig(), "test") == 300.0
    rest = DataConfig(splits={"train": "rest"})
    assert planned_count(rest, "train") == 10_000 - 300 - 100 - 400
    assert planned_count(DataConfig(splits={"test": 0.1}), "test") == 1000
    assert planned_count(DataConfig(sample=1000, splits={"train": "rest"}), "train") == 200
    one_digit = DataConfig(addition=AdditionConfig(digits=1),
                           splits={"test": 10, "dev": 10, "labelled": 10, "train": "rest"})
    assert planned_count(one_digit, "train") == 70
    assert planned_count(DataConfig(splits={"test": 0.5, "train": "rest"}), "train") == 4500
    assert planned_count(DataConfig(source="f.jsonl", splits={"test": 0.2}), "test") == 1.0
    assert planned_count(DataConfig(source="f.jsonl", splits={"train": "rest"}), "train") == 1.0


def test_planned_count_of_the_shipped_chat_file_is_not_the_addition_pool():
    """builtin:chat_tasks is a shipped file (3,000 rows), not 10**(2·digits) addition pairs:
    a fraction or rest of it counts as a file's does (1, scaled per trial)."""
    cfg = DataConfig(source="builtin:chat_tasks", splits={"test": 0.1, "train": "rest"})
    assert planned_count(cfg, "test") == 1.0 and planned_count(cfg, "train") == 1.0
    assert planned_count(DataConfig(source="builtin:chat_tasks"), "train") == 4000.0


def test_builtin_chat_tasks_pool():
    pool = load_pool(DataConfig(source="builtin:chat_tasks"))
    assert len(pool) == 3000 and all(r["response"] for r in pool)
    assert all(r["messages"][-1]["role"] == "user" for r in pool)


# ---- format: real chat templates --------------------------------------------------------------

GEN_PROMPT = {"qwen2": "<|im_start|>assistant\n",
              "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
CHAT = [{"role": "system", "content": "You are terse."},
        user("What is 37 + 48? Answer with the number only, please.")]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_local_models(tmp_path_factory.mktemp("data_local_models"))


@pytest.fixture(scope="module")
def toks(model_dirs):
    return {name: AutoTokenizer.from_pretrained(path) for name, path in model_dirs.items()}


def fam(name):
    return name.split("-")[0]


@pytest.mark.parametrize("name", ["qwen2-teacher", "llama-student"])
def test_prompt_ids_render_the_chat_template_with_the_generation_prompt(toks, name):
    tok = toks[name]
    ids = prompt_ids(tok, CHAT, 512)
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert render_prompt(tok, CHAT) == text and tok.decode(ids) == text
    assert text.endswith(GEN_PROMPT[fam(name)]) and "You are terse." in text
    if fam(name) == "llama":
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    else:
        assert tok.bos_token_id is None and not tok.decode(ids).startswith("<|endoftext|>")


@pytest.mark.parametrize("name", ["qwen2-student", "llama-teacher"])
def test_left_truncation_keeps_bos_and_the_last_tokens(toks, name):
    tok = toks[name]
    full = prompt_ids(tok, CHAT, 10_000)
    cut = prompt_ids(tok, CHAT, 12)
    assert len(full) > 12 and len(cut) == 12
    if fam(name) == "llama":
        assert cut[0] == tok.bos_token_id and cut[1:] == full[-11:]
    else:
        assert cut == full[-12:]
    assert tok.decode(cut).endswith(GEN_PROMPT[fam(name)])  # it still asks for the answer
    assert prompt_ids(tok, CHAT, len(full)) == full


@pytest.mark.parametrize("name", ["qwen2-teacher", "llama-teacher"])
def test_response_ids_end_with_eos_only_when_finished_and_under_the_limit(toks, name):
    tok = toks[name]
    body = tok("85", add_special_tokens=False)["input_ids"]
    assert response_ids(tok, "85", 8) == [*body, tok.eos_token_id]
    assert response_ids(tok, "85", 8, finished=False) == body
    long_text = "eighty five is the answer to this one"
    long_ids = tok(long_text, add_special_tokens=False)["input_ids"]
    assert len(long_ids) > 3
    assert response_ids(tok, long_text, 3) == long_ids[:3]  # cut: no EOS
    assert response_ids(tok, "85", len(body)) == body  # exactly at the limit: no room for EOS
    assert tok.bos_token_id not in response_ids(tok, "85", 8)


@pytest.mark.parametrize("name", ["qwen2-student", "llama-student"])
def test_encode_keeps_prompt_len_exact(toks, name):
    tok = toks[name]
    response = response_ids(tok, "85", 8)
    ex = encode(tok, CHAT, response, max_prompt_tokens=512, max_seq_len=1024)
    assert ex.input_ids[:ex.prompt_len] == prompt_ids(tok, CHAT, 512)
    assert ex.input_ids[ex.prompt_len:] == response and ex.response_len == len(response)
    for max_prompt, max_seq in ((10, 1024), (512, 14), (4, 6)):
        ex = encode(tok, CHAT, response, max_prompt_tokens=max_prompt, max_seq_len=max_seq)
        assert len(ex.input_ids) <= max_seq and ex.prompt_len <= max_prompt
        assert ex.input_ids[ex.prompt_len:] == response  # the prompt gives way first
        assert ex.input_ids[:ex.prompt_len] == prompt_ids(tok, CHAT, ex.prompt_len)
        if fam(name) == "llama":
            assert ex.input_ids[0] == tok.bos_token_id
    huge = list(range(3, 40))
    ex = encode(tok, CHAT, huge, max_prompt_tokens=512, max_seq_len=16)
    assert len(ex.input_ids) == 16 and ex.prompt_len == 1 and ex.input_ids[1:] == huge[:15]


def test_stop_ids_include_the_generation_config_eos(toks, model_dirs, tmp_path):
    from transformers import GenerationConfig

    for name in ("qwen2-teacher", "llama-teacher"):
        tok, path = toks[name], model_dirs[name]
        gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
        stops = stop_ids(tok, path)
        assert tok.eos_token_id in stops and gen_eos in stops
        assert stops == [tok.eos_token_id]  # the two agree here: listed once
    tok = toks["llama-teacher"]
    end_of_text = tok.convert_tokens_to_ids("<|end_of_text|>")
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [end_of_text, tok.eos_token_id]}))  # as Llama 3 Instruct lists them
    assert stop_ids(tok, tmp_path) == [tok.eos_token_id, end_of_text]
    assert stop_ids(tok) == [tok.eos_token_id]

    class NoEos:
        eos_token_id = None

    with pytest.raises(ConfigError, match="no EOS token"):
        stop_ids(NoEos(), tmp_path / "missing")


def test_check_vocabulary(toks):
    with pytest.raises(ConfigError) as exc:
        check_vocabulary(toks["llama-student"], toks["llama-other-vocab"], "llama-student",
                         "llama-other-vocab", "logit KD")
    msg = str(exc.value)
    assert "\n" not in msg and "logit KD needs one vocabulary" in msg
    assert "llama-student" in msg and "llama-other-vocab" in msg and "sft" in msg
    assert f"{len(toks['llama-other-vocab']):,}" in msg
    for family in ("llama", "qwen2"):
        check_vocabulary(toks[f"{family}-teacher"], toks[f"{family}-student"], "t", "s", "KD")


GSM8K = r"####\s*(-?[\d,\.]+)"


def test_answer_of_with_a_gsm8k_pattern():
    gold = "Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.\n#### 72"
    assert answer_of(gold, GSM8K) == "72"
    assert answer_of("so the total is\n####  1,234 \n", GSM8K) == "1234"
    assert answer_of("#### -3.5", GSM8K) == "-3.5"
    assert answer_of("I think it is 72", GSM8K) is None  # no answer line, no credit
    assert answer_of("#### 1,000", GSM8K) == answer_of("#### 1000", GSM8K)
    assert answer_of("  58 \n") == "58" and answer_of("58", "") == "58"
    assert answer_of("the answer: 42.", r"\d+") == "42"  # no group: the whole match


# ---- format: the built-in task's byte tokenizer -----------------------------------------------


def test_byte_tokenizer_prompt_is_the_plain_text():
    from raydistill.distill.tiny import make_tokenizer

    tok = make_tokenizer()
    assert not getattr(tok, "chat_template", None) and tok.bos_token_id is None
    msgs = [user("47+38=")]
    assert render_prompt(tok, msgs) == "47+38="
    ids = prompt_ids(tok, msgs, 16)
    assert ids == tok("47+38=", add_special_tokens=False)["input_ids"] and len(ids) == 6
    assert tok.decode(ids) == "47+38="
    assert prompt_ids(tok, msgs, 3) == ids[-3:]
    assert response_ids(tok, "58", 8) == [*tok("58", add_special_tokens=False)["input_ids"],
                                          tok.eos_token_id]
    ex = encode(tok, msgs, response_ids(tok, "58", 8), max_prompt_tokens=16, max_seq_len=32)
    assert ex.prompt_len == 6 and len(ex.input_ids) == 9


def test_stop_ids_of_a_hub_id_come_from_the_hub_cache(toks, tmp_path, monkeypatch):
    """A teacher used where it is (steps 0) is named by its hub id, not a directory: its
    generation_config.json's stops are read from the hub cache (offline, as on a cluster
    that fetched the model), not silently dropped."""
    from huggingface_hub import constants

    tok = toks["llama-teacher"]
    end_of_text = tok.convert_tokens_to_ids("<|end_of_text|>")
    repo = tmp_path / "hub" / "models--org--teacher"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snap / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [end_of_text, tok.eos_token_id]}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert stop_ids(tok, "org/teacher") == [tok.eos_token_id, end_of_text]
    assert stop_ids(tok, "org/not-cached") == [tok.eos_token_id]
