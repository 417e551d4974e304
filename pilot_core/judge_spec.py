"""What a judge is, written once for the preference labels (curation) and the validation metrics, and the one
dispatch from a judge's kind to how it scores a response on its own.

The two stages use judges differently (preferences rank a prompt's candidates, validation compares a method's
answer with a reference), but a judge is the same thing to both: a name, a model (an LLM judge, a reward model,
none for the demo's rule), the rubrics' version and how an LLM judge is asked (`JudgeSpec`); a kind that
scores a response alone (`ALONE`: the rule, a reward model) scores it the same way in both (`scores_alone`),
compared pairwise by `compare`; and an LLM judge is asked about a pair the same way in both (`pair_calls`: the
rubric, both orders, the verdict's schema), its answers read by `pilot_core.judging`'s strict parsers.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pilot_core.config import BaseConfig
from pilot_core.judging import pairwise_messages, rubric, rule_score, verdict_params
from pilot_core.models.calls import Call, Endpoint, make_call
from pilot_core.models.source import ModelSource
from pilot_core.names import config_name

ALONE = ("rules", "reward_model")  # the kinds that score a response on its own (no LLM call)


class JudgeSpec(BaseConfig):
    """The fields every judge has (its kinds are the stage's own: `JudgeConfig`, `JudgeMetric`,
    `HarmlessnessMetric` add theirs)."""

    name: str = "judge"
    model: ModelSource | None = Field(None, description="the judge LLM, or a sequence-classification reward "
                                      "model (kind reward_model, local); kind rules needs none")
    rubric_version: str = Field("v1", description="pilot_core/rubrics/<rubric>.<version>.txt")
    max_tokens: int = Field(256, ge=16)
    structured_output: bool = Field(True, description="a served judge is asked for the verdict's JSON schema "
                                    "(response_format; vLLM enforces it while decoding); a server that refuses the "
                                    "parameter is asked without it")

    _name = field_validator("name")(config_name("judge name"))


def scores_alone(kind: str, items: list[tuple[list, str, str]], reward=None) -> list[float]:
    """The score of each (conversation, response, rubric) by a judge that scores a response alone: kind rules,
    the demo's refusal rule under the rubric (`rule_score`: 1 or 0); kind reward_model, `reward`'s score (a
    `RewardModel`)."""
    if kind == "rules":
        return [rule_score(rubric, text) for _, text, rubric in items]
    if kind == "reward_model":
        return reward.score([(messages, text) for messages, text, _ in items]) if items else []
    raise ValueError(f"judge kind {kind!r} does not score a response alone")


def pair_calls(judge: JudgeSpec, endpoint: Endpoint, messages: list, first: str, second: str, rubric_name: str,
               both_orders: bool = True) -> list[Call]:
    """An LLM judge's calls on one pair under the rubric: `first` as A, and (both orders) `second` as A too, so
    that position bias shows as orders that disagree (`pilot_core.judging.combine_orders`: a tie)."""
    text, params = rubric(rubric_name, judge.rubric_version), verdict_params(judge, "pairwise")
    orders = [(first, second), (second, first)] if both_orders else [(first, second)]
    return [make_call("judgment", judge.name, endpoint, pairwise_messages(text, messages, a, b), params)
            for a, b in orders]


def compare(score: float, other: float, tie_margin: float = 0.0) -> float:
    """A pairwise verdict from two scores: 1 the first wins, 0 it loses, 0.5 a tie (within `tie_margin`)."""
    return 0.5 if abs(score - other) <= tie_margin else float(score > other)
