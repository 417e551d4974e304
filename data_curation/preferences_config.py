"""Typed recipe for responses and preferences (configs/preferences/*.yaml): who writes candidate responses, who
judges them, and how chosen/rejected pairs are built from the verdicts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from pilot_core.config import BaseConfig
from pilot_core.judge_spec import JudgeSpec
from pilot_core.models.calls import ClientConfig
from pilot_core.models.ray_calls import RayCallsConfig
from pilot_core.models.source import ModelSource
from pilot_core.names import check_unique, config_name


class Price(BaseConfig):
    """USD per million tokens, for the cost estimate in the manifest (0 for self-hosted models)."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class Throughput(BaseConfig):
    """How fast one request to an endpoint runs, declared (or measured) for the plan (`pilot run --plan`): a
    request takes first_token_s + its output tokens / output_tokens_per_s; `concurrency` run at once."""

    output_tokens_per_s: float = Field(gt=0, description="decode speed of one request, output tokens per second")
    first_token_s: float = Field(0.0, ge=0, description="seconds before the first token (queue + prefill)")


class GeneratorConfig(BaseConfig):
    name: str
    model: ModelSource = Field(description="url + served_model (OpenAI-compatible; key from api_key_env), or a "
                               "local path / tiny model run with transformers")
    samples: int = Field(1, ge=1, description="responses per prompt from this generator")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None
    price: Price = Price()
    throughput: Throughput | None = Field(None, description="for the plan's hours (null: unknown)")

    _name = field_validator("name")(config_name("generator or judge name"))

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _without_plan(handler(self))


class JudgeConfig(JudgeSpec):
    """The preference labels' judge: an LLM comparing two candidates (pairwise) or scoring one (pointwise), a
    reward model, or the offline demo's refusal rule per rubric (`pilot_core.judging.rule_score`)."""

    name: str
    kind: Literal["pairwise", "pointwise", "reward_model", "rules"] = "pairwise"
    both_orders: bool = Field(True, description="pairwise: judge A/B and B/A; disagreeing orders make a tie")
    strategy: Literal["screened", "round_robin"] = Field(
        "screened", description="pairwise: `screened` scores each response pointwise first (one call each) and "
        "judges pairwise only the pairs whose scores are within `margin`; `round_robin` judges every pair")
    margin: float = Field(1.0, ge=0, description="screened: pairs whose pointwise scores (1-10) differ by at most "
                          "this, or with a response left unscored, are judged pairwise")
    price: Price = Price()
    throughput: Throughput | None = Field(None, description="for the plan's hours (null: unknown)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """strategy and margin are left out of the dump (so of the stage's hash) where they change nothing: judges
        that are not pairwise behave as before they existed."""
        out = handler(self)
        if self.kind != "pairwise":
            out.pop("strategy", None)
            out.pop("margin", None)
        return _without_plan(out)


def _without_plan(out: dict) -> dict:
    """An undeclared throughput is left out of the dump: recipes that declare none hash as before it existed."""
    if out.get("throughput") is None:
        out.pop("throughput", None)
    return out


class PairConfig(BaseConfig):
    min_margin: float = Field(0.0, ge=0, description="chosen score - rejected score must exceed this")
    max_response_chars: int = Field(8000, ge=1)
    rejected: Literal["worst", "second_best"] = "worst"


class PreferencesConfig(BaseConfig):
    seed: int = 0
    cache: str | None = Field(None, description="response/judgment cache (SQLite); null: <output>.cache.sqlite")
    generators: list[GeneratorConfig] = Field(min_length=1)
    judge: JudgeConfig
    category_rubrics: dict[str, Literal["harmless", "helpful", "honest"]] = Field(
        {"harmful": "harmless", "knowledge": "honest"},
        description="curated category -> rubric (any other category: helpful)")
    client: ClientConfig = ClientConfig()
    # where the calls are sent from changes no result: left out of the dump, so of the stage's hash
    engine: Literal["local", "ray"] = Field(
        "local", exclude=True, description="`local`: from this process; `ray`: a Ray Data pipeline on the cluster "
        "RAY_ADDRESS names (else a local Ray), for served models only (needs the `ray` extra)")
    ray: RayCallsConfig = Field(RayCallsConfig(), exclude=True, description="engine ray: its actors and batches")
    pairs: PairConfig = PairConfig()
    labelled_pairs: bool = Field(True, description="pairs a source already labels (ultrafeedback-binarized, trl "
                                 "with chosen/rejected; hh-rlhf where its source asks) join the dpo split beside the "
                                 "generated ones, with origin `labelled` and the source as their generator; an empty "
                                 "side, identical sides or a side over pairs.max_response_chars are left out")

    @model_validator(mode="after")
    def _unique(self) -> "PreferencesConfig":
        check_unique([g.name for g in self.generators], "generator")
        if sum(g.samples for g in self.generators) < 2:
            raise ValueError("preference pairs need at least two responses per prompt (generators x samples)")
        if self.judge.kind != "rules" and self.judge.model is None:
            raise ValueError(f"judge kind {self.judge.kind} needs model")
        if self.judge.kind == "reward_model" and self.judge.model.url:
            raise ValueError("a reward-model judge runs locally: give judge.model.path or tiny")
        if self.engine == "ray":
            callers = [(f"generator {g.name}", g.model) for g in self.generators]
            callers += [(f"judge {self.judge.name}", self.judge.model)] if self.judge.kind in ("pairwise",
                                                                                              "pointwise") else []
            local = [who for who, m in callers if not m.url]
            if local:
                raise ValueError(f"engine ray sends the calls of served models; {local[0]} is a local model: serve "
                                 "it (vLLM) and give its url, or use engine local")
        return self
