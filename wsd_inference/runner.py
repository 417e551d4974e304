"""Run a decoding method (WSD or one it is compared with) over a prompt list into a resumable JSONL file.

The one entry point shared by `pilot wsd generate`, the pipeline and validation: it reads the method registry
(`methods.METHODS`), loads what the method uses in-process or reaches the model that writes on its server,
persists every finished record (in-process: every batch), and returns a summary of the new records.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.method_record import MethodRecord
from pilot_core.models.compute import Compute
from pilot_core.models.openai_server import RequestRefused
from pilot_core.models.source import ModelSource
from pilot_core.prompts import PromptRecord
from wsd_inference.config import WSDConfig
from wsd_inference.methods import METHODS, LocalModels, Method, ServedModels, continuous_batching, get_method
from wsd_inference.records import ResumableJsonl


def served_at_all(method: Method, pilot: ModelSource, base: ModelSource, untuned: ModelSource | None,
                   cfg: WSDConfig) -> bool:
    """Whether the model that writes is on a server; a combination the method cannot run is a UserError."""
    uses = method.models(cfg)
    remote = bool((base if "base" in uses else pilot).url)
    if pilot.url and not remote:
        raise UserError("a pilot on a server needs a base on a server too (or give a local pilot)")
    if remote and not method.can_serve:
        raise UserError(f"method {method.name} runs on local models only for now (over a server: "
                        f"{', '.join(m.name for m in METHODS.values() if m.can_serve)})")
    if remote and cfg.speculation.given:  # auto: the server's own business
        raise UserError("speculation (--speculate) runs with an in-process base; a base on a vLLM server "
                        "speculates on the server: start it with --speculative-config '{\"method\": \"draft_model\", "
                        "\"model\": PILOT, \"num_speculative_tokens\": K}' (README, Speculative decoding)")
    if remote and method.name == "wsd" and cfg.rule == "relative":
        raise UserError("wsd.rule relative reads the pilot's own top-1 probabilities while it drafts: it runs with "
                        "in-process models (a served base: the absolute rule)")
    if untuned is None and "untuned" in uses:
        raise UserError(f"method {method.name} needs the pilot's untuned reference model (--untuned)")
    if method.scores_in_process and "untuned" in uses and (pilot.url or (untuned and untuned.url)):
        raise UserError(f"method {method.name} scores with the pilot and its untuned reference in-process: give "
                        "both as local models (the base may be on a server)")
    return remote


class ModelLoader:
    """Loads the models a method uses, in-process, as `compute` places them (or reaches them on their servers);
    the runner and the WSD server (`serving.make_backend`) share it."""

    def __init__(self, cfg: WSDConfig, compute: Compute | None):
        self.cfg, self.compute = cfg, compute

    def hf(self, src: ModelSource, role: str, chat: bool = False):
        from pilot_core.models.loading import load_hf_model

        return load_hf_model(src.local_path(), f"{role} {src.name}", self.compute, src.trust_remote_code,
                             need_chat_template=chat, revision=src.revision)

    def reward(self):
        from pilot_core.models.reward import RewardModel

        return RewardModel(self.cfg.bon.reward_model, self.compute, revision=self.cfg.bon.reward_model_revision)

    def local(self, uses, pilot, base, untuned) -> LocalModels:
        return LocalModels(pilot=self.hf(pilot, "pilot", chat=True) if "pilot" in uses else None,
                           base=self.hf(base, "base") if "base" in uses else None,
                           untuned=self.hf(untuned, "untuned") if "untuned" in uses else None,
                           reward=self.reward() if "reward" in uses else None)

    def served(self, uses, pilot, base, untuned, pilot_ids: bool = False) -> ServedModels:
        from pilot_core.models.completions import LocalCompletions, ServedCompletions
        from pilot_core.models.loading import load_tokenizer
        from pilot_core.models.local_chat import LocalChat
        from pilot_core.models.openai_server import OpenAIServer, ServedModel

        m = ServedModels(reward=self.reward() if "reward" in uses else None,
                         untuned=self.hf(untuned, "untuned") if "untuned" in uses else None)
        if "pilot" in uses:
            if pilot.url:
                m.pilot = OpenAIServer.of(pilot)
                if pilot_ids:  # the pilot continues token ids rendered here: its tokenizer is needed
                    m.pilot_lm = ServedCompletions(ServedModel(m.pilot, load_tokenizer(
                        pilot.tokenizer or pilot.served_model, f"pilot {pilot.name} tokenizer",
                        pilot.trust_remote_code, pilot.revision)))
            else:  # a local pilot drafts (streams) and scores in-process
                m.tuned = self.hf(pilot, "pilot", chat=True)
                m.pilot, m.pilot_lm = LocalChat(m.tuned), LocalCompletions(m.tuned)
        if "base" in uses:
            tok = load_tokenizer(base.tokenizer or base.served_model, f"base {base.name} tokenizer",
                                 base.trust_remote_code, base.revision)
            m.base = ServedModel(OpenAIServer.of(base), tok)
        return m


@dataclass(frozen=True)
class GenerationSummary:
    """What a run of `generate_to_file` added to its output."""

    output: str
    new: int  # records written by this run
    already_done: int  # prompts the output held already (skipped)
    switched: int  # new records whose base took over (WSD)
    mean_kept_draft_tokens: float
    mean_base_tokens: float

    @classmethod
    def of(cls, output: Path, new: list[MethodRecord], already_done: int) -> GenerationSummary:
        n = max(len(new), 1)
        return cls(str(output), len(new), already_done, sum(r.wsd.switched for r in new),
                   sum(r.wsd.kept_draft_tokens for r in new) / n, sum(r.base_tokens for r in new) / n)


SAVE_EVERY_S = 2.0  # finished records are written (and fsynced) at most this often, not one fsync per record


def _run_local(method: Method, models: LocalModels, todo: list[PromptRecord], cfg: WSDConfig, save) -> None:
    """Batch by batch, each batch's records saved; or, batched continuously, batch_size answers running at once (a
    finished answer's place goes to the next prompt at the next step), finished records saved every SAVE_EVERY_S
    seconds and when the run stops."""
    if not continuous_batching(method, cfg):
        for i in range(0, len(todo), cfg.batch_size):
            save(method.local(models, todo[i : i + cfg.batch_size], cfg))
        return
    engine, waiting, finished, last = method.continuous(models), iter(todo), [], time.monotonic()
    try:
        while True:
            while engine.running < cfg.batch_size and (rec := next(waiting, None)) is not None:
                engine.add(rec, cfg)
            if not engine.running:
                break
            finished += [a.record for a in engine.step()]
            if finished and time.monotonic() - last >= SAVE_EVERY_S:
                done, finished, last = finished, [], time.monotonic()  # never saved twice, even if saving fails
                save(done)
    finally:  # what finished is kept, also when the run stops
        if finished:
            save(finished)


REFUSED_AT_START = 8  # refusals before any prompt ran: every request is wrong (a bad parameter), not one item


async def _served_one(method: Method, models: ServedModels, rec: PromptRecord, cfg: WSDConfig) -> MethodRecord:
    """One prompt with the model that writes on a server. A pilot stream that breaks part-way starts over; a
    prompt the server refuses (a 400: too long for the base's context, say) is a record with its error."""
    t0 = time.perf_counter()
    try:
        if models.pilot is None:
            return await method.served(models, rec, cfg)
        return await models.pilot.retry_broken(lambda: method.served(models, rec, cfg))
    except RequestRefused as e:
        return MethodRecord(rec.id, method.name, "", time.perf_counter() - t0, {}, error=str(e))


async def served_rolling(method: Method, models: ServedModels, recs: list[PromptRecord], cfg: WSDConfig,
                         on_record, ran_before: int = 0) -> None:
    """Prompts through a rolling window of batch_size in flight, as a server's clients keep it busy: a finished
    prompt's slot goes to the next at once (no barrier between groups), and `on_record` gets each record as it
    finishes. Refused prompts are recorded; refusals before any prompt ran (here or in the `ran_before` prompts of
    an earlier run) stop the run (RequestRefused)."""
    todo = iter(recs)
    seen = {"ran": ran_before, "refused": 0}

    async def worker():
        for rec in todo:  # one iterator shared by the workers: each takes the next prompt
            r = await _served_one(method, models, rec, cfg)
            seen["refused" if r.error else "ran"] += 1
            if not seen["ran"] and seen["refused"] >= min(REFUSED_AT_START, len(recs)):
                raise RequestRefused(f"{seen['refused']} prompts refused and none ran: {r.error}")
            on_record(r)

    try:
        async with asyncio.TaskGroup() as tg:  # one failure cancels the other workers
            for _ in range(min(cfg.batch_size, len(recs))):
                tg.create_task(worker())
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None


async def served_group(method: Method, models: ServedModels, recs: list[PromptRecord],
                       cfg: WSDConfig) -> list[MethodRecord]:
    """One group of prompts with the model that writes on a server; records in input order. A search decodes
    the group as one scorer batch; other methods go through the rolling window."""
    if method.served_batch is not None:
        return await method.served_batch(models, recs, cfg)
    got: dict[str, MethodRecord] = {}
    await served_rolling(method, models, recs, cfg, lambda r: got.__setitem__(r.id, r))
    return [got[rec.id] for rec in recs]


def _run_served(method: Method, models: ServedModels, todo: list[PromptRecord], cfg: WSDConfig, save,
                done_before: int = 0) -> None:
    """A search's prompts in groups (each group one scorer batch, as in-process: one refused prompt stops it);
    every other method's through the rolling window, its finished records saved every SAVE_EVERY_S seconds."""

    async def main():
        pending: list[MethodRecord] = []
        last = time.monotonic()

        def finished(r: MethodRecord) -> None:
            nonlocal last
            pending.append(r)
            if time.monotonic() - last >= SAVE_EVERY_S:
                save(pending[:])
                pending.clear()
                last = time.monotonic()

        try:
            if method.served_batch:
                for i in range(0, len(todo), cfg.batch_size):
                    save(await served_group(method, models, todo[i : i + cfg.batch_size], cfg))
            else:
                try:
                    await served_rolling(method, models, todo, cfg, finished, ran_before=done_before)
                finally:  # what finished is kept, also when the run stops
                    if pending:
                        save(pending)
        finally:
            for client in (models.base and models.base.server, models.pilot):
                if client is not None:
                    await client.close()

    asyncio.run(main())


def generate_to_file(pilot: ModelSource, base: ModelSource, prompts: list[PromptRecord], cfg: WSDConfig,
                     output: str | Path, compute: Compute | None = None, progress: bool = True,
                     method: str = "wsd", untuned: ModelSource | None = None) -> GenerationSummary:
    m = get_method(method)
    remote = served_at_all(m, pilot, base, untuned, cfg)
    settings = {"method": method, "pilot": pilot.model_dump(mode="json"), "base": base.model_dump(mode="json"),
                "untuned": untuned.model_dump(mode="json") if untuned else None,
                # how answers are batched changes none (up to float rounding): an output resumes under any batching
                "config": cfg.model_dump(mode="json", exclude={"batching"}),
                "compute": (compute or Compute()).resolve().identity()}
    out = ResumableJsonl(output, settings)
    done = out.done_ids()
    todo = [p for p in prompts if p.id not in done]
    new: list[MethodRecord] = []
    if todo or not out.path.exists():
        from tqdm import tqdm

        # everything that can fail on bad models fails here, before the output is opened
        if continuous_batching(m, cfg, remote):  # the pilot does not speculate there: not loaded for it
            cfg = cfg.without_speculation()
        loader, uses = ModelLoader(cfg, compute), m.models(cfg, in_process=not remote)
        models = (loader.served(uses, pilot, base, untuned, m.pilot_ids) if remote
                  else loader.local(uses, pilot, base, untuned))
        if m.check is not None:
            m.check(models, cfg)
        with out, tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"{method} {base.name}",
                       unit="prompt", disable=not progress) as bar:

            def save(records: list[MethodRecord]) -> None:
                out.write(records)
                new.extend(records)
                bar.update(len(records))

            if remote:
                _run_served(m, models, todo, cfg, save, done_before=len(prompts) - len(todo))
            else:
                _run_local(m, models, todo, cfg, save)
            out.finish(order=[p.id for p in prompts])
    return GenerationSummary.of(out.path, new, len(prompts) - len(todo))
