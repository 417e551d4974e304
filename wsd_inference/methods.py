"""The decoding methods, in one registry: WSD and the methods it is compared with.

The CLI's choices, the runner (in-process and over HTTP), the validation config and validation itself all read
this table, so a new method is one entry here plus its implementation:

    Method("my_method", "what it does, one line for --help and the README",
           uses=("pilot", "base"),
           local=lambda m, recs, cfg: my_module.my_batch(m.pilot, m.base, recs, cfg),
           served=lambda m, rec, cfg: my_module.my_one(m.pilot, m.base, rec, cfg))  # optional

The WSD server (`pilot wsd serve`) serves the methods that also give `watched` (a local runner that takes a
`Watch`: the request's stop strings and a callback per token, to stream and to cancel) and whose served runner
takes the request's stop strings and a callback given the answer so far (`stop=(), on_text=None`).

A method that decodes with an in-process base says `speculates=True` and passes `m.pilot` to
`continuation.Speculator.of`: the pilot (added to the roles it uses) proposes the base's tokens where that pays
(`--speculate auto`, the default) or as asked (`--speculate K`); `--speculate 0` turns it off.

A local runner decodes one batch of prompts with in-process models (`LocalModels`) and returns one
`MethodRecord` per prompt; a method whose records carry a trace of their own names its type (`trace=`): it reads
the records back from their files and reduces them to the report's diagnostics. A served runner decodes one
prompt with the base on a server (`ServedModels`); a batch-served runner (the searches) decodes a batch,
because its in-process scorers work batch by batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord, NudgingTrace, SearchTrace, SpeculationFigures, Trace, WSDTrace
from wsd_inference import baselines, continuous, eft, engine, nudging, remote_engine, remote_search, search, staged

if TYPE_CHECKING:  # the CLI imports this table: the methods' modules import no config (pydantic) at import time
    from pilot_core.models.completions import LocalCompletions, ServedCompletions
    from pilot_core.models.loading import HFModel
    from pilot_core.models.local_chat import LocalChat
    from pilot_core.models.openai_server import OpenAIServer, ServedModel
    from pilot_core.models.reward import RewardModel
    from pilot_core.models.sampling import Watch
    from wsd_inference.config import WSDConfig
    from wsd_inference.continuous import ContinuousEngine

ROLES = ("pilot", "base", "untuned", "reward")  # what a method may use


@dataclass
class LocalModels:
    """What a method runs with in-process (None where it uses none)."""

    pilot: HFModel | None = None  # the chat pilot
    base: HFModel | None = None
    untuned: HFModel | None = None  # the pilot's untuned reference
    reward: RewardModel | None = None


@dataclass
class ServedModels:
    """What a method runs with when the model that writes is on a server."""

    base: ServedModel | None = None  # the base on its server, with its tokenizer
    pilot: OpenAIServer | LocalChat | None = None  # the pilot as a chat model, served or in-process
    tuned: HFModel | None = None  # the pilot in-process, as a scorer (the searches)
    pilot_lm: LocalCompletions | ServedCompletions | None = None  # the pilot continuing token ids (pilot_ids)
    untuned: HFModel | None = None
    reward: RewardModel | None = None


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    uses: tuple[str, ...] | Callable[[WSDConfig], tuple[str, ...]]  # the ROLES it reads, or a rule over the config
    local: Callable[[LocalModels, list, WSDConfig], list[MethodRecord]]
    watched: Callable[[LocalModels, list, WSDConfig, Watch], list[MethodRecord]] | None = None  # local, servable
    served: Callable[[ServedModels, object, WSDConfig], Awaitable[MethodRecord]] | None = None
    served_batch: Callable[[ServedModels, list, WSDConfig], Awaitable[list[MethodRecord]]] | None = None
    trace: type[Trace] | None = None  # what its records carry beyond the common fields
    check: Callable[[object, WSDConfig], object] | None = None  # raises early (before any output), given the models
    scores_in_process: bool = False  # with a served base, the pilot and its reference still score in-process
    pilot_ids: bool = False  # with a served base, the pilot continues token ids (a served pilot's tokenizer is loaded)
    validation: bool = True  # whether `pilot validate` may run it
    speculates: bool = False  # in-process, the pilot proposes the base's tokens when speculation is on
    continuous: Callable[[LocalModels], ContinuousEngine] | None = None  # in-process, continuous batching

    @property
    def servable(self) -> bool:
        """Whether `pilot wsd serve` can serve it (see the module's docstring)."""
        return self.watched is not None

    def models(self, cfg: WSDConfig, in_process: bool = True) -> tuple[str, ...]:
        """The ROLES this method reads under `cfg` (`in_process`: with in-process models, where the pilot may
        speculate for the base)."""
        uses = self.uses(cfg) if callable(self.uses) else self.uses
        assert set(uses) <= set(ROLES), f"method {self.name} uses an unknown role: {uses}"
        if in_process and self.speculates and cfg.speculation.enabled and "pilot" not in uses:
            uses += ("pilot",)  # the pilot as the base's draft model
        return uses

    @property
    def can_serve(self) -> bool:
        return self.served is not None or self.served_batch is not None

    def diagnostics(self, records: list[MethodRecord]) -> dict:
        """The `pilot_core.report.Diagnostics` fields of one (base, eval set)'s records: items and time, items that
        failed, the method's own figures and the speculation's where the pilot speculated (of the items that ran)."""
        out = {"n": len(records), "mean_time_s": sum(r.time_s for r in records) / len(records)}
        ran = [r for r in records if r.error is None]
        if len(ran) < len(records):
            out["failed"] = len(records) - len(ran)  # items the server refused
        if self.trace is not None and ran:
            out.update(self.trace.diagnostics(ran))
        return {**out, **SpeculationFigures.diagnostics([r.speculation for r in ran if r.speculation])}


def _bon_uses(cfg: WSDConfig) -> tuple[str, ...]:
    return ("pilot", "base", "untuned") if cfg.bon.scorer == "implicit" else ("base", "reward")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("wsd", "the pilot drafts, the base takes over at the first window with geometric-mean probability ≥ γ",
           uses=("pilot", "base"), speculates=True, trace=WSDTrace,
           local=lambda m, recs, cfg: engine.wsd_batch(m.pilot, m.base, recs, cfg),
           watched=lambda m, recs, cfg, watch: engine.wsd_batch(m.pilot, m.base, recs, cfg, watch),
           continuous=lambda m: continuous.ContinuousEngine("wsd", m.base, m.pilot),
           served=lambda m, rec, cfg, stop=(), on_text=None: remote_engine.wsd_one(m.pilot, m.base, rec, cfg, stop,
                                                                                     on_text)),
    Method("base_only", "the base alone with the plain role template",
           uses=("base",), speculates=True,
           local=lambda m, recs, cfg: baselines.base_only_batch(m.base, recs, cfg, pilot=m.pilot),
           watched=lambda m, recs, cfg, watch: baselines.base_only_batch(m.base, recs, cfg, watch, m.pilot),
           continuous=lambda m: continuous.ContinuousEngine("base_only", m.base),
           served=lambda m, rec, cfg, stop=(), on_text=None: remote_engine.base_only_one(m.base, rec, cfg, stop,
                                                                                           on_text)),
    Method("pilot_only", "the pilot alone with its chat template, for the whole budget",
           uses=("pilot",),
           local=lambda m, recs, cfg: baselines.pilot_only_batch(m.pilot, recs, cfg),
           continuous=lambda m: continuous.ContinuousEngine("pilot_only", m.pilot),
           served=lambda m, rec, cfg: remote_engine.pilot_only_one(m.pilot, rec, cfg)),
    Method("urial", "the base with a fixed in-context alignment prefix (URIAL)",
           uses=("base",), speculates=True,
           local=lambda m, recs, cfg: baselines.urial_batch(m.base, recs, cfg, pilot=m.pilot),
           continuous=lambda m: continuous.ContinuousEngine("urial", m.base),
           served=lambda m, rec, cfg: remote_engine.urial_one(m.base, rec, cfg),
           check=lambda m, cfg: baselines.urial_prefix(cfg.urial_prefix)),
    Method("bon", "best-of-N base samples, ranked by the pilot's implicit reward (or a reward model)",
           uses=_bon_uses, speculates=True, trace=SearchTrace,
           local=lambda m, recs, cfg: search.bon_batch(m.base, m.pilot, m.untuned, recs, cfg, m.reward),
           served_batch=lambda m, recs, cfg: remote_search.bon_remote(m.base, m.tuned, m.untuned, recs, cfg,
                                                                      m.reward),
           scores_in_process=True),
    Method("cbs", "weak-to-strong search: chunk-level beam search guided by the pilot's implicit reward",
           uses=("pilot", "base", "untuned"), speculates=True, trace=SearchTrace,
           local=lambda m, recs, cfg: search.cbs_batch(m.base, m.pilot, m.untuned, recs, cfg),
           served_batch=lambda m, recs, cfg: remote_search.cbs_remote(m.base, m.tuned, m.untuned, recs, cfg),
           scores_in_process=True),
    Method("eft", "emulated fine-tuning: base + β·(pilot − untuned) log-probabilities per token (one vocabulary)",
           uses=("pilot", "base", "untuned"), speculates=True,
           local=lambda m, recs, cfg: eft.eft_batch(m.base, m.pilot, m.untuned, recs, cfg),
           check=lambda m, cfg: eft.shared_vocabulary(m.base, m.pilot, m.untuned)),
    Method("nudging", "Nudging as its authors run it (Fei et al. 2025): each round the pilot writes, the base "
           "takes over at the first word it agrees with or is sure of (top-1 ≥ γ) and writes while sure",
           uses=("pilot", "base"), speculates=True, trace=NudgingTrace,
           local=lambda m, recs, cfg: nudging.nudging_batch(m.pilot, m.base, recs, cfg),
           served=lambda m, rec, cfg: nudging.nudging_one(m.pilot_lm, m.base, rec, cfg),
           pilot_ids=True),
    Method("wsd_staged", "WSD as the authors run it: the whole draft, one scoring pass, a fresh prefill of the "
           "base (same answers as wsd; a speed reference)",
           uses=("pilot", "base"), trace=WSDTrace,
           local=lambda m, recs, cfg: staged.staged_batch(m.pilot, m.base, recs, cfg),
           validation=False),
)}


def continuous_batching(method: Method, cfg: WSDConfig, remote: bool = False, serving: bool = False) -> bool:
    """Whether in-process answers are batched continuously (`continuous.ContinuousEngine`: an answer joins the
    running batch at the next step and leaves it when done) rather than batch by batch, as `cfg.batching` says:
    continuous where the method has it (the others batch by batch). auto: in a server (`serving`), whose requests
    arrive over time, where the method has it, more than one answer runs at once (batch_size) and no k is given for
    the pilot to speculate with (static batches speculate, continuous batching does not yet): a new request never
    waits for a batch to end. In `pilot wsd generate`, all prompts at hand, static: measured, continuous batching
    gained 1.2-1.3x only for WSD at 8-32 answers at once with speculation off, and lost to static batches where the
    pilot speculates on a close pair (0.6-0.7x on the SmolLM2 pair) and for the tiny pilot alone
    (docs/benchmarks.md). A base on a server is batched by its server (`remote`: always False)."""
    if remote or method.continuous is None or cfg.batching == "static":
        return False
    if cfg.batching == "continuous":  # WSDConfig refuses it beside a given k
        return True
    return serving and cfg.batch_size > 1 and not (cfg.speculation.given and method.speculates)


def read_record(d: dict) -> MethodRecord:
    """A record as a method's runner wrote it (one line of `pilot wsd generate`'s output)."""
    return MethodRecord.from_json(d, get_method(d["method"]).trace)


def get_method(name: str) -> Method:
    from pilot_core.errors import UserError

    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
