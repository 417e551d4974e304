"""Typed decoding settings: WSD (defaults are the paper's: w=6, gamma=0.8, 512-token draft, 2048 total) and the
methods compared with it (their defaults from the weak-to-strong search code: CBS W,K,L = 2,2,30, T=0.7, top-k 50;
Nudging's word-sized pieces from its paper; its gamma is WSD's `threshold`)."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from pilot_core.config import BaseConfig
from pilot_core.hub_items import HubRef, hub_model
from pilot_core.models.sampling import Sampling
from pilot_core.models.speculative import Speculation


class CBSConfig(BaseConfig):
    """Weak-to-strong search (Zhou et al. 2024): chunk-level beam search guided by the pilot's implicit reward."""

    beam_width: int = Field(2, ge=1, description="W: rows kept after each selection")
    successors: int = Field(2, ge=1, description="K: samples per kept row")
    chunk_length: int | None = Field(30, ge=1, description="L: base tokens per chunk (null = whole response)")
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, description="0 = off")

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k)


class BoNConfig(BaseConfig):
    n: int = Field(4, ge=1, description="samples from the base per prompt")
    scorer: Literal["implicit", "reward_model"] = "implicit"
    reward_model: str | None = Field(None, description="reward model (a one-output sequence-classification model: "
                                     "a local path or hub id) for scorer=reward_model")
    reward_model_revision: str | None = Field(None, description="a hub reward_model: the commit to read; pin one "
                                              "in production (`pilot fetch` locks it)")
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0)

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k)

    @model_validator(mode="after")
    def _scorer(self) -> "BoNConfig":
        if self.scorer == "reward_model" and not self.reward_model:
            raise ValueError("scorer reward_model needs reward_model: the path of a sequence-classification model")
        return self

    def hub_refs(self) -> list[HubRef]:
        return hub_model(self.reward_model, self.reward_model_revision, "reward_model", "reward_model_revision")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Unset, `reward_model_revision` is left out of the dump (so of the config's hash): it changes nothing."""
        out = handler(self)
        if self.reward_model_revision is None:
            out.pop("reward_model_revision", None)
        return out


class EFTConfig(BaseConfig):
    beta: float = Field(1.0, description="base + beta * (tuned - untuned) log-probabilities, per token")


class NudgingConfig(BaseConfig):
    """Nudging as its authors run it (fywalter/nudging `completion_with_nudging`, wsd_inference/nudging_rule.py):
    each round the pilot writes a completion; the base takes over at the first word it agrees with or is sure of
    (top-1 probability >= threshold), and writes while it stays sure."""

    threshold: float = Field(0.4, ge=0.0, le=1.0, description="gamma: the base's top-1 probability at which it "
                             "takes over and below which it hands back (the authors' README: 0.4)")
    completion_tokens: int = Field(16, ge=2, description="tokens per completion, the pilot's and the base's (the "
                                   "authors' completion_token_num)")
    max_rounds: int = Field(150, ge=1, description="rounds (each opened by the pilot) before the answer ends")


AUTO_FIRST_K = 4  # `auto`'s first proposals per row; k then adapts per row and the measured costs cap it


class SpeculationConfig(BaseConfig):
    """Speculative decoding of the base's tokens, in-process, with the pilot as the draft model: the base checks
    the pilot's next k tokens in one pass; the answer is the base's own, greedy or sampled (the base draws every
    token itself, as a plain step does). A round runs only where the measured costs say it pays (`pace`), so it
    steps aside where it does not. A served base speculates on its server instead (vLLM's --speculative-config):
    `auto` leaves it alone."""

    tokens: int | Literal["auto"] = Field("auto", description="k: tokens the pilot proposes per round at first, "
                                          "adapted per row within [1, max_tokens]; auto: speculate where an "
                                          "in-process pilot is at hand and it pays; 0 = off")
    max_tokens: int = Field(16, ge=1, le=64, description="the largest k a row adapts to")
    min_acceptance: float = Field(0.3, ge=0.0, le=1.0, description="a row stops speculating when fewer of its "
                                  "proposals than this were kept (checked after min_rounds rounds)")
    min_rounds: int = Field(4, ge=1, description="rounds a row speculates before its acceptance rate is judged")
    margin: float = Field(0.1, ge=0.0, description="a round runs only where it is expected to write this much "
                          "faster than plain steps (its cost timed on a batch shape's passes, up to 8 of each kind)")
    pace: Literal["measured", "always"] = Field("measured", description="measured: rounds only where they pay; "
                                                "always: every round (to study the mechanism)")

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: int | str) -> int | str:
        if v != "auto" and not 0 <= v <= 64:
            raise ValueError("tokens is auto or a k from 0 to 64")
        return v

    @property
    def auto(self) -> bool:
        return self.tokens == "auto"

    @property
    def enabled(self) -> bool:
        return self.tokens != 0

    @property
    def given(self) -> bool:
        """A k was given (--speculate K or the config's), not auto, not off."""
        return self.enabled and not self.auto

    def settings(self) -> Speculation:
        first = AUTO_FIRST_K if self.auto else self.tokens
        return Speculation(first, self.max_tokens, self.min_acceptance, self.min_rounds, self.margin,
                           self.pace)


class WSDConfig(BaseConfig):
    window: int = Field(6, ge=1, description="w: draft tokens in the geometric-mean window")
    threshold: float = Field(0.8, ge=0.0, le=1.0, description="gamma: switch at the first window mean >= gamma")
    rule: Literal["absolute", "relative"] = Field("absolute", description="absolute: the window's geometric mean "
                                                  "of the base's probabilities of the draft tokens (the paper); "
                                                  "relative: of the base's probability over the pilot's own top-1 "
                                                  "probability at that point of the draft (in-process pilots)")
    max_draft_tokens: int = Field(512, ge=0, description="pilot tokens drafted at most")
    max_new_tokens: int = Field(2048, ge=1, description="total budget in base tokens: kept draft + continuation")
    batch_size: int = Field(8, ge=1, description="prompts decoded together")
    batching: Literal["auto", "continuous", "static"] = Field("auto", description="in-process: continuous (an "
                                                              "answer joins the running batch at the next step "
                                                              "and leaves it when done; wsd, base_only, urial, "
                                                              "pilot_only, the others static; the pilot does not "
                                                              "speculate), static (batch by batch, each until its "
                                                              "last answer is done; the pilot speculates for the "
                                                              "base), auto: continuous in the server where the "
                                                              "method has it, batch_size > 1 and "
                                                              "speculation.tokens is not a given k; static in "
                                                              "generate")
    chunk_size: int = Field(8, ge=1, description="draft tokens scored per base forward pass (online engine)")
    draft_scoring: Literal["once", "doubling"] = Field("once", description="a served base (online WSD): when it "
                                                       "scores the draft, with the same answers either way; once: "
                                                       "when the draft is finished or fills the budget (one "
                                                       "request; the continuation reuses the server's prefix "
                                                       "cache); doubling: at chunk_size, 2x, 4x ... draft tokens "
                                                       "(the pilot stops nearer the switch, more prefills)")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (the paper); > 0 samples, seeded")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    urial_prefix: str | None = Field(None, description="URIAL in-context prefix file (default: the bundled one)")
    cbs: CBSConfig = CBSConfig()
    bon: BoNConfig = BoNConfig()
    eft: EFTConfig = EFTConfig()
    nudging: NudgingConfig = NudgingConfig()
    speculation: SpeculationConfig = SpeculationConfig()

    def sampling(self) -> Sampling:
        """How WSD, the baselines and EFT pick tokens (the searches sample with their own settings)."""
        return Sampling(self.temperature, self.top_p)

    def without_speculation(self) -> WSDConfig:
        return self.model_copy(update={"speculation": self.speculation.model_copy(update={"tokens": 0})})

    def prompt_seed(self, key: str) -> int:
        """The seed of one prompt's (or one search row's) sampling: a sampled answer does not depend on the batch
        it ran in, and the local and served paths draw with the same seed."""
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:4], "little")

    def generators(self, keys: list[str], sampling: Sampling | None = None) -> list:
        """One seeded generator per key (None when decoding greedily)."""
        sampling = sampling or self.sampling()
        return [sampling.generator(self.prompt_seed(k)) for k in keys]

    def served_seed(self, key: str) -> int | None:
        """The server-side sampling seed of a prompt (none when decoding greedily)."""
        return self.prompt_seed(key) if self.temperature > 0 else None

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """At their defaults, `draft_scoring` and `batching` are left out of the dump (so of the hashes and the
        settings a resumed output is checked against, which were made without them): neither changes an answer
        (batching: up to float rounding, as any two batch shapes)."""
        out = handler(self)
        for key, default in (("draft_scoring", "once"), ("batching", "auto")):
            if getattr(self, key) == default:
                out.pop(key, None)
        return out

    @model_validator(mode="after")
    def _batching(self) -> "WSDConfig":
        if self.batching == "continuous" and self.speculation.given:
            raise ValueError(f"batching continuous does not speculate (speculation.tokens {self.speculation.tokens}):"
                             " batching static speculates, or speculation.tokens auto or 0")
        return self

    @model_validator(mode="after")
    def _budget(self) -> "WSDConfig":
        if self.max_draft_tokens > 0 and self.window > self.max_draft_tokens:
            raise ValueError(f"window {self.window} is longer than max_draft_tokens {self.max_draft_tokens}: "
                             "no window could ever be scored")
        return self
