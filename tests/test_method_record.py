"""The method record: written flat (the README's output format, the same keys for every method), read back to
the same typed record through the method registry, and reduced to the report's diagnostics by each method's
entry."""

import json

import pytest

from pilot_core.method_record import MethodRecord, NudgingTrace, SearchTrace, SpeculationFigures, WSDTrace
from pilot_core.report import Diagnostics
from wsd_inference.methods import METHODS, read_record

COMMON = ("id", "method", "response", "draft_text", "switch_index", "switched", "pilot_tokens", "kept_draft_tokens",
          "base_tokens", "window_scores", "time_s", "timing")
SPEC = SpeculationFigures(proposed=10, accepted=7, tokens=12, base_passes=5, rounds=3)
RECORDS = [
    MethodRecord("a", "wsd", "Hi there.", time_s=0.123456, timing={"batch_s": 1.0}, pilot_tokens=9, base_tokens=4,
                 trace=WSDTrace("Hi", 2, True, 3, [0.91234567, 0.5])),
    MethodRecord("b", "wsd", "Hello.", time_s=0.2, timing={}, pilot_tokens=6, base_tokens=0,
                 trace=WSDTrace("Hello.", 5, False, 6, [0.1]), speculation=SPEC),
    MethodRecord("c", "base_only", "Sure.", time_s=0.1, timing={}, base_tokens=3, speculation=SPEC),
    MethodRecord("d", "nudging", "Well, yes.", time_s=0.1, timing={}, pilot_tokens=2, base_tokens=6,
                 trace=NudgingTrace(handoffs=3, pilot_pieces=2)),
    MethodRecord("e", "bon", "Best.", time_s=0.1, timing={}, base_tokens=2,
                 trace=SearchTrace(-1.23456789, 4, [-1.23456789, -2.0, -3.0, -4.0])),
    MethodRecord("f", "cbs", "Beam.", time_s=0.1, timing={}, base_tokens=2, trace=SearchTrace(0.5, 4)),
]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.id)
def test_a_record_reads_back_as_written(rec):
    line = json.loads(json.dumps(rec.to_json()))
    assert set(COMMON) <= set(line)  # every method writes the README's fields
    assert read_record(line) == rec
    assert read_record(line).to_json() == line


def test_the_flat_layout_and_the_trace_fields():
    wsd, spec, base, nudging, bon, cbs = (r.to_json() for r in RECORDS)
    assert wsd["window_scores"] == [0.912346, 0.5] and wsd["switch_index"] == 2 and wsd["time_s"] == 0.1235
    assert base["switch_index"] is None and base["draft_text"] == "" and base["kept_draft_tokens"] == 0
    assert base["speculation"] == {"proposed": 10, "accepted": 7, "tokens": 12, "acceptance_rate": 0.7,
                                   "base_passes": 5, "tokens_per_base_pass": 2.4, "rounds": 3}
    assert "speculation" not in wsd and (nudging["handoffs"], nudging["pilot_pieces"]) == (3, 2)
    assert bon["score"] == -1.234568 and bon["candidates"] == 4 and len(bon["candidate_scores"]) == 4
    assert "candidate_scores" not in cbs and "handoffs" not in bon
    assert RECORDS[0].completion_tokens == 3 + 4 and RECORDS[2].completion_tokens == 3


def test_each_method_entry_gives_its_diagnostics():
    wsd = Diagnostics(**METHODS["wsd"].diagnostics(RECORDS[:2]))
    assert wsd.n == 2 and wsd.switched_share == 0.5 and wsd.switch_indices == [2]
    assert wsd.mean_kept_draft_tokens == 4.5 and wsd.pilot_token_share == pytest.approx(9 / 13)
    assert wsd.speculation_acceptance_rate == 0.7 and wsd.tokens_per_base_pass == 2.4  # only b speculated
    assert wsd.mean_handoffs is None
    nud = Diagnostics(**METHODS["nudging"].diagnostics([RECORDS[3]]))
    assert nud.mean_handoffs == 3 and nud.pilot_token_share == 0.25 and nud.switched_share is None
    base = Diagnostics(**METHODS["base_only"].diagnostics([RECORDS[2]]))
    assert base.switched_share is None and base.pilot_token_share is None and base.speculation_acceptance_rate == 0.7
