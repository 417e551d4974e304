"""GenerAlign curation on real-looking fixtures (tests/data/curation/make_fixtures.py): every planted case ends
where it should, with the right stage and reason; runs are reproducible; earlier versions dedup incrementally;
new thresholds replay on stored scores; bad input is one clear error or an excluded row."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_curation.config import CurationConfig, DedupConfig, SourceConfig
from data_curation.dedup import Deduplicator
from data_curation.filters import find_pii
from data_curation.run import curate
from flows.curate_cli import quick_config
from pilot_core.errors import UserError

from .helpers import GENERALIGN_CHATS, GENERALIGN_EVAL, GENERALIGN_PREVIOUS, GENERALIGN_PROMPTS, REPO

PROMPTS, CHATS, EVAL, PREVIOUS = GENERALIGN_PROMPTS, GENERALIGN_CHATS, GENERALIGN_EVAL, GENERALIGN_PREVIOUS


def quick(*sources, eval_sets=(str(EVAL),), **kw):
    return quick_config(tuple(str(s) for s in sources), eval_sets, kw.pop("language", None), None)


def tables(out: Path):
    kept = {r["id"]: r for r in pq.read_table(out / "prompts.parquet").to_pylist()}
    excl = {r["id"]: r for r in pq.read_table(out / "excluded.parquet").to_pylist()}
    return kept, excl


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cur") / "v1"
    summary = curate(quick(PROMPTS, CHATS), output=str(out), progress=False)
    return out, summary, *tables(out)


def test_every_planted_case_lands_where_it_should(run):
    out, summary, kept, excl = run
    n_prompts = sum(1 for line in open(PROMPTS) if line.strip())
    n_chats = sum(1 for line in open(CHATS) if line.strip())
    assert summary.read == n_prompts + n_chats == len(kept) + len(excl)  # nothing silently dropped
    want = {
        "dup-0": ("dedup", "exact_duplicate", "prompts:ok-howto-0"),
        "dup-1": ("dedup", "exact_duplicate", "prompts:ok-explain-3"),
        "dup-2": ("dedup", "exact_duplicate", "prompts:ok-write-5"),
        "dup-3": ("dedup", "exact_duplicate", "prompts:ok-math-0"),
        "near-0": ("dedup", "near_duplicate", "prompts:ok-long-0"),
        "near-1": ("dedup", "near_duplicate", "prompts:ok-long-0"),
        "near-2": ("dedup", "near_duplicate", "prompts:ok-long-1"),
        "contam-0": ("decontamination", "contaminated_overlap", "eval.jsonl#ev-1"),
        "contam-1": ("decontamination", "contaminated_overlap", "eval.jsonl#ev-2"),
        "contam-2": ("decontamination", None, "eval.jsonl#ev-3"),
        "contam-3": ("decontamination", "contaminated_exact", "eval.jsonl#ev-4"),
        "junk-repeat-0": ("filter", "repetition", None),
        "junk-symbols-0": ("filter", "symbols", None),
        "junk-boiler-0": ("filter", "boilerplate_lorem_ipsum", None),
        "junk-short-0": ("filter", "too_short", None),
        **{f"lang-{c}-0": ("filter", f"language_{c}", None) for c in ("de", "fr", "es", "zh", "ru", "it")},
    }
    for rid, (stage, reason, matched) in want.items():
        row = excl[f"prompts:{rid}"]
        assert row["stage"] == stage and (reason is None or row["reason"] == reason), row
        assert row["matched"] == matched, row
        if stage == "dedup":
            assert row["score"] >= 0.8
    for rid, reason in {"chat-bad-0": "bad_messages", "chat-bad-1": "no_user_turn", "row6": "malformed_json",
                        "empty-0": "missing_prompt"}.items():
        assert excl[f"chats:{rid}"]["stage"] == "load" and excl[f"chats:{rid}"]["reason"] == reason
    # everything not planted is kept, harmful prompts included (tagged, not dropped)
    planted = {f"prompts:{r}" for r in want}
    for line in open(PROMPTS):
        rid = "prompts:" + json.loads(line)["id"]
        assert (rid in excl) == (rid in planted), rid
    harm = [r for r in kept.values() if r["id"].startswith("prompts:harm-")]
    assert len(harm) == 12 and all(r["harm_tags"] and r["category"] == "harmful" for r in harm)
    assert not any(r["harm_tags"] for r in kept.values() if r["id"].startswith("prompts:ok-"))
    assert all(r["lang"] == "en" for r in kept.values())


def test_normalisation_pii_and_conversations(run):
    out, _, kept, _ = run
    assert kept["prompts:norm-0"]["text"] == "What's a good name for a café that sells only pastries?"
    assert kept["prompts:norm-1"]["text"] == "Give me three ideas for a rainy weekend."
    assert "\u0007" in json.loads(kept["prompts:norm-1"]["original"])[0]["content"]  # the original is kept
    for rid, kind in (("email", "email"), ("phone", "phone"), ("ip", "ip"), ("card", "card")):
        row = kept[f"prompts:pii-{rid}-0"]
        assert row["pii"] == [kind] and f"<{kind.upper()}>" in row["text"]
    raw = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for secret in (b"john.doe@example.com", b"415-555-0132", b"192.168.10.24", b"4111 1111 1111 1111"):
        assert secret not in raw  # redacted everywhere: tables, datasets copy, card, manifest
    chat0 = kept["chats:chat-0"]["messages"]
    assert [t["role"] for t in chat0] == ["system", "user", "assistant", "user"]
    assert [t["role"] for t in kept["chats:chat-1"]["messages"]] == ["user"]  # ShareGPT turns; reply removed


def test_manifest_card_and_datasets_copy(run):
    import datasets

    out, summary, kept, excl = run
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "dataset" and m["data"]["kept"] == len(kept) and m["data"]["read"] == summary.read
    assert m["data"]["excluded"]["dedup"] == {"exact_duplicate": 4, "near_duplicate": 3}
    assert set(m["inputs"]) == {"prompts", "chats", "reference:eval.jsonl"}
    assert m["data"]["lsh_bands_rows"][0] * m["data"]["lsh_bands_rows"][1] <= 128
    card = (out / "README.md").read_text()
    assert "| dedup | near_duplicate | 3 |" in card and f"**{len(kept)} kept**" in card
    dd = datasets.load_from_disk(str(out / "dataset"))
    assert dd["prompts"].num_rows == len(kept) and dd["excluded"].num_rows == len(excl)
    assert set(dd["prompts"]["id"]) == set(kept)


def test_reruns_are_identical(run, tmp_path):
    out, *_ = run
    curate(quick(PROMPTS, CHATS), output=str(tmp_path / "again"), progress=False)
    for name in ("prompts.parquet", "excluded.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_incremental_dedup_against_earlier_versions(tmp_path):
    """v1 publishes previous.jsonl; v2 (config mode, previous: auto) drops what v1 already holds and names it."""
    first = tmp_path / "first.jsonl"
    rows = [json.loads(x) for x in open(PROMPTS)]
    first.write_text(PREVIOUS.read_text() + json.dumps({"id": "again", "prompt": rows[3]["prompt"]}) + "\n")
    cfg = CurationConfig(name="ga", output_dir=str(tmp_path / "datasets"),
                         sources=[SourceConfig(name="s", path=str(first))])
    v1 = curate(cfg, progress=False).output
    assert v1.endswith("ga/v1")
    cfg2 = cfg.model_copy(update={"sources": [SourceConfig(name="s", path=str(PROMPTS))]})
    v2 = curate(cfg2, progress=False).output
    assert v2.endswith("ga/v2")
    _, excl = tables(Path(v2))
    assert excl[f"s:{rows[3]['id']}"]["matched"] == "v1/s:again"
    assert excl[f"s:{rows[3]['id']}"]["reason"] == "exact_duplicate"
    assert excl["s:ok-long-1"]["reason"] == "near_duplicate" and excl["s:ok-long-1"]["matched"] == "v1/s:old-2"
    m = json.loads((Path(v2) / "manifest.json").read_text())
    assert m["data"]["previous_rows_indexed"] == 4


def test_thresholds_replay_on_stored_scores(run, tmp_path):
    out, *_ = run
    src = tmp_path / "gone.jsonl"
    src.write_bytes(PROMPTS.read_bytes())
    base = quick(src, CHATS)
    first = tmp_path / "first"
    curate(base, output=str(first), progress=False)
    src.unlink()  # a replay never reads the sources again
    looser = base.model_copy(deep=True)
    looser.filters.quality.max_repetition = 0.95
    looser.filters.language.keep = ["en", "de"]
    curate(looser, output=str(tmp_path / "replayed"), replay=str(first), progress=False)
    kept, excl = tables(tmp_path / "replayed")
    assert "gone:junk-repeat-0" in kept and "gone:lang-de-0" in kept and "gone:lang-fr-0" in excl
    assert excl["chats:row6"]["reason"] == "malformed_json"  # load-stage drops carry over
    first_kept, _ = tables(first)
    assert set(kept) == set(first_kept) | {"gone:junk-repeat-0", "gone:lang-de-0"}
    other = base.model_copy(deep=True)
    other.filters.pii.action = "flag"
    with pytest.raises(UserError, match="run without --replay"):
        curate(other, output=str(tmp_path / "no"), replay=str(first), progress=False)


def test_columnar_sources_caps_and_mix(tmp_path):
    import datasets

    rows = [json.loads(x) for x in open(PROMPTS)][:120]
    table = pa.table({"qid": [r["id"] for r in rows], "question": [r["prompt"] for r in rows]})
    pq.write_table(table, tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("qid,question\n" + "".join(f"{r['id']},\"{r['prompt']}\"\n" for r in rows[60:]))
    datasets.Dataset.from_dict({"conv": [[{"from": "human", "value": r["prompt"] + " Please be brief."}]
                                         for r in rows[:50]]}).save_to_disk(str(tmp_path / "hf"))
    cols = {"id": "qid", "prompt": "question"}
    cfg = CurationConfig(sources=[
        SourceConfig(name="pq", kind="parquet", path=str(tmp_path / "a.parquet"), columns=cols, cap=50),
        SourceConfig(name="csv", kind="csv", path=str(tmp_path / "b.csv"), columns=cols, weight=2),
        SourceConfig(name="hf", kind="hf", path=str(tmp_path / "hf"), columns={"id": None, "prompt": None,
                                                                              "messages": "conv"}, weight=1)],
        mix={"total": 60}, filters={"language": None})
    out = tmp_path / "out"
    s = curate(cfg, output=str(out), progress=False)
    kept, excl = tables(out)
    caps = [r for r in excl.values() if r["reason"] == "over_cap"]
    assert len(caps) == 70 and all(r["source"] == "pq" for r in caps)
    assert {r["source"] for r in kept.values()} == {"pq", "csv", "hf"}
    mix = json.loads((out / "manifest.json").read_text())["data"]["mix"]
    assert {k: v["target"] for k, v in mix.items()} == {"pq": 15, "csv": 30, "hf": 15}
    for name, v in mix.items():
        assert sum(r["source"] == name for r in kept.values()) == v["kept"] == min(v["target"], v["available"])
    assert s.read == 120 + 60 + 50
    # the csv repeats parquet rows: they are exact duplicates of the parquet rows that passed the cap
    assert any(r["reason"] == "exact_duplicate" and r["source"] == "csv" for r in excl.values())
    # the same seed gives the same capped sample
    again = curate(cfg, output=str(tmp_path / "again"), progress=False)
    assert tables(Path(again.output))[0].keys() == kept.keys()


@pytest.mark.parametrize("case", ["missing_column_jsonl", "missing_column_parquet", "empty", "not_utf8"])
def test_bad_sources_are_one_clear_error(tmp_path, case):
    f = tmp_path / "in.jsonl"
    kind, cols = "jsonl", {"prompt": "question"}
    if case == "missing_column_jsonl":
        f.write_text('{"id": 1, "prompt": "How do I bake bread?"}\n')
        match = "no row has the column 'question'"
    elif case == "missing_column_parquet":
        f = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": [1], "prompt": ["How do I bake bread?"]}), f)
        kind, match = "parquet", r"column 'question' not found \(columns: id, prompt\)"
    elif case == "empty":
        f.write_text("")
        cols, match = {}, "is empty"
    else:
        f.write_bytes(b'{"id": 1, "prompt": "ok"}\n{"id": 2, "prompt": "caf\xe9"}\n')
        cols, match = {}, r"in.jsonl:2: not valid UTF-8"
    cfg = CurationConfig(sources=[SourceConfig(name="s", kind=kind, path=str(f), columns=cols)])
    with pytest.raises(UserError, match=match):
        curate(cfg, output=str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_huge_prompt_is_an_excluded_row(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"id": "big", "prompt": "word " * 2_000_000}) + "\n"
                 + json.dumps({"id": "fine", "prompt": "How do I repot a cactus without getting hurt?"}) + "\n")
    out = tmp_path / "out"
    curate(quick(f, eval_sets=()), output=str(out), progress=False)
    kept, excl = tables(out)
    assert list(kept) == ["in:fine"]
    assert excl["in:big"]["reason"] == "too_long_chars" and excl["in:big"]["score"] == 10_000_000


def test_cli_quick_mode_and_exit_codes(tmp_path):
    cli = [sys.executable, "-m", "flows.cli", "curate", "--quiet"]
    ok = subprocess.run([*cli, "--source", str(PROMPTS), "--eval-set", str(EVAL), "--output", str(tmp_path / "o")],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "excluded at dedup: exact_duplicate 4, near_duplicate 3" in ok.stdout
    before = (tmp_path / "o" / "manifest.json").read_bytes()
    # the same run again (a rerun after a crash that came after the rename): nothing to do
    same = subprocess.run([*cli, "--source", str(PROMPTS), "--eval-set", str(EVAL), "--output", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True)
    assert same.returncode == 0 and "already complete" in same.stdout, same.stderr
    # another run (here without the eval set) into a finished version: refused, the version untouched
    again = subprocess.run([*cli, "--source", str(PROMPTS), "--output", str(tmp_path / "o")], cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "o" / "manifest.json").read_bytes() == before
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = subprocess.run([*cli, "--source", str(empty), "--output", str(tmp_path / "e")], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "empty.jsonl is empty" in bad.stderr and not (tmp_path / "e").exists()


def test_pii_patterns():
    text, found = find_pii("mail a.b@c.org, card 4111-1111-1111-1111, not a card 1234 5678 9012 3456, "
                           "ip 10.0.0.1 but not 999.1.1.1, phone +44 20 7946 0958", ["email", "phone", "ip", "card"])
    assert sorted(found) == ["card", "email", "ip", "phone"]
    assert "1234 5678 9012 3456" in text and "999.1.1.1" in text and "<CARD>" in text and "<PHONE>" in text


def test_lsh_bands_follow_the_threshold():
    loose, strict = Deduplicator(DedupConfig(threshold=0.5)), Deduplicator(DedupConfig(threshold=0.9))
    assert loose.bands_rows != strict.bands_rows and strict.bands_rows[1] > loose.bands_rows[1]


def test_more_rows_than_one_scoring_batch_with_categories_from_one_source(tmp_path):
    """Scores are written in batches of 512: a first batch without any PII or harm tag (empty lists) must not fix
    the column types for the later batches, and a source without categories mixes with one that has them."""
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"How do I grow tomato number {i} at home?"})
                             + "\n" for i in range(600)))
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text(json.dumps({"id": "t0", "prompt": "Email me at jane@example.com about the spy on my wife plan.",
                                  "category": "harmful"}) + "\n")
    cfg = CurationConfig(name="big", output_dir=str(tmp_path / "datasets"), sources=[
        SourceConfig(name="plain", path=str(plain)),
        SourceConfig(name="tagged", path=str(tagged), columns={"prompt": "prompt", "category": "category"})])
    out = tmp_path / "out"
    curate(cfg, output=str(out), progress=False)
    kept = pq.read_table(out / "prompts.parquet").to_pylist()
    last = next(r for r in kept if r["id"].endswith("t0"))
    assert last["category"] == "harmful" and last["pii"] == ["email"] and "privacy" in last["harm_tags"]
