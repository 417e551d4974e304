"""Online WSD with the base model (and optionally the pilot) behind OpenAI-compatible servers.

Per prompt: the pilot's draft streams in; the base scores it (echo + logprobs) when the draft reaches
chunk_size, 2*chunk_size, 4*chunk_size, ... tokens (a server re-scores the whole text each time, so a doubling
schedule keeps scoring within twice the draft while still stopping the draft near the switch point); only
tokens whose base tokenisation is final are used; the base then continues from the kept token ids.
Same semantics and record format as `engine.wsd_batch`; prompts run concurrently, `batch_size` at a time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from wsd_inference.config import WSDConfig
from wsd_inference.engine import prompt_generators, prompt_seed
from wsd_inference.hf_backend import HFModel, RaggedBatch, pick_token
from wsd_inference.openai_backend import OpenAIServer, retry_malformed
from wsd_inference.prompts import (STOP_STRINGS, PromptRecord, base_prompt, base_text, cut_at_markers,
                                   pilot_prompt)
from wsd_inference.records import method_record
from wsd_inference.switch import first_switch, stable_token_count, window_scores


async def _local_pilot(pilot: HFModel, rec: PromptRecord, cfg: WSDConfig):
    """A local pilot drafting one prompt, token by token in a worker thread; yields (delta, finished, 1)."""
    (gen,) = prompt_generators(cfg, [rec.id])
    batch = RaggedBatch(pilot, 1)
    out = await asyncio.to_thread(batch.feed, [pilot.encode(pilot_prompt(pilot.tokenizer, rec.messages))])
    nxt, ids, text = out[0][-1], [], ""
    while len(ids) < cfg.max_draft_tokens:
        t = pick_token(nxt, cfg.temperature, cfg.top_p, gen)
        ids.append(t)
        done = t in pilot.stop_ids or len(ids) >= cfg.max_draft_tokens
        new_text = pilot.decode(ids)
        yield new_text[len(text):], done, 1
        text = new_text
        if done:
            return
        nxt = (await asyncio.to_thread(batch.feed, [[t]]))[0][-1]


def _pilot_stream(pilot, rec: PromptRecord, cfg: WSDConfig):
    if isinstance(pilot, OpenAIServer):
        return pilot.stream_chat(list(rec.messages), cfg.max_draft_tokens, cfg.temperature, cfg.top_p,
                                 _seed(cfg, rec))
    return _local_pilot(pilot, rec, cfg)


@dataclass
class RemoteBase:
    """A base model on a server, with its tokenizer loaded locally (tokenizer files are small)."""

    server: OpenAIServer
    tokenizer: object

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


async def wsd_one(pilot, base: RemoteBase, rec: PromptRecord, cfg: WSDConfig) -> dict:
    t0 = time.perf_counter()
    prompt = base_prompt(rec.messages, base.tokenizer.bos_token)
    P = len(base.encode(prompt))
    draft, n_pilot, finished, next_check = "", 0, cfg.max_draft_tokens == 0, cfg.chunk_size
    accept, switched, ids, logps = None, False, [], []
    stream = None if finished else _pilot_stream(pilot, rec, cfg)
    try:
        while True:
            if not finished:
                async for delta, reason, tokens in stream:
                    draft += delta
                    n_pilot += tokens
                    finished = bool(reason) or n_pilot >= cfg.max_draft_tokens
                    if finished or n_pilot >= next_check:
                        break
                else:
                    finished = True
                next_check *= 2
            text = base_text(prompt, draft)
            enc = base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if finished and not draft.strip():  # empty draft: the authors' base input is the stripped prompt
                ids = enc.input_ids
                break
            n = len(enc.input_ids) if finished else stable_token_count(enc.offset_mapping, text, len(prompt))
            if n > P:
                ids = enc.input_ids[:n]
                logps = [x if x is not None else float("-inf") for x in (await base.server.score(ids))[P:]]
                a = first_switch(logps, cfg.window, cfg.threshold)
                if a is not None:
                    accept, switched = a, True
                    break
            if finished:
                accept = len(logps) - 1
                break
    finally:
        if stream is not None:
            await stream.aclose()  # closing the stream aborts the pilot's request on the server

    kept_n = 0 if accept is None else min(accept + 1, cfg.max_new_tokens)
    context = ids if accept is None else ids[: P + kept_n]
    kept = context[P:] if accept is not None else []
    budget = cfg.max_new_tokens - kept_n
    cont, n_cont = "", 0
    if budget > 0:
        cont, n_cont, *_ = await base.server.complete(context, budget, list(STOP_STRINGS), cfg.temperature,
                                                     cfg.top_p, _seed(cfg, rec))
    kept_text = base.decode(kept)
    return _record(rec, "wsd", cut_at_markers(kept_text + cont), t0, draft_text=kept_text, switch_index=accept,
                   switched=switched, pilot_tokens=n_pilot, kept_draft_tokens=len(kept), base_tokens=n_cont,
                   window_scores=window_scores(logps[: (accept or 0) + 1], cfg.window))


def _record(rec: PromptRecord, method: str, response: str, t0: float, **fields) -> dict:
    total = time.perf_counter() - t0
    return method_record(rec.id, method, response, time_s=total, timing={"prompt_s": round(total, 4)}, **fields)


def _seed(cfg: WSDConfig, rec: PromptRecord) -> int | None:
    """The server-side sampling seed of a prompt (none when decoding greedily)."""
    return prompt_seed(cfg, rec.id) if cfg.temperature > 0 else None


async def base_alone_one(base: RemoteBase, rec: PromptRecord, cfg: WSDConfig, method: str = "base_only",
                         urial: str | None = None) -> dict:
    """base_only (plain role template) or URIAL (in-context prefix) on a served base."""
    from wsd_inference.baselines import URIAL_STOP, urial_answer, urial_prompt

    t0 = time.perf_counter()
    if method == "urial":
        prompt, stop = urial_prompt(rec.messages, urial, base.tokenizer.bos_token), URIAL_STOP
    else:
        prompt, stop = base_prompt(rec.messages, base.tokenizer.bos_token), STOP_STRINGS
    text, n, *_ = await base.server.complete(base.encode(prompt), cfg.max_new_tokens, list(stop), cfg.temperature,
                                            cfg.top_p, _seed(cfg, rec))
    response = cut_at_markers(text, stop)
    if method == "urial":
        response = urial_answer(response)
    return _record(rec, method, response, t0, base_tokens=n)


async def pilot_alone_one(pilot: OpenAIServer, rec: PromptRecord, cfg: WSDConfig) -> dict:
    t0 = time.perf_counter()
    text, n = "", 0
    async for delta, _, tokens in pilot.stream_chat(list(rec.messages), cfg.max_new_tokens, cfg.temperature,
                                                    cfg.top_p, _seed(cfg, rec)):
        text, n = text + delta, n + tokens
    return _record(rec, "pilot_only", text.strip(), t0, pilot_tokens=n)


async def wsd_remote(pilot, base: RemoteBase, recs: list[PromptRecord], cfg: WSDConfig,
                     method: str = "wsd") -> list[dict]:
    """All prompts, `cfg.batch_size` in flight at once; results in input order."""
    from wsd_inference.baselines import urial_prefix

    sem = asyncio.Semaphore(cfg.batch_size)
    prefix = urial_prefix(cfg.urial_prefix) if method == "urial" else None
    run = {"wsd": lambda rec: wsd_one(pilot, base, rec, cfg),
           "base_only": lambda rec: base_alone_one(base, rec, cfg),
           "urial": lambda rec: base_alone_one(base, rec, cfg, "urial", prefix),
           "pilot_only": lambda rec: pilot_alone_one(pilot, rec, cfg)}[method]

    async def one(rec):
        async with sem:
            if isinstance(pilot, OpenAIServer):  # a pilot stream that breaks part-way: the prompt starts again
                return await retry_malformed(pilot.url, pilot.tries, lambda: run(rec))
            return await run(rec)

    return list(await asyncio.gather(*(one(r) for r in recs)))


def run_remote(pilot, base_server: OpenAIServer | None, base_tokenizer, recs: list[PromptRecord], cfg: WSDConfig,
               on_records, group: int | None = None, method: str = "wsd", untuned=None, reward=None) -> None:
    """Run a method over HTTP for all prompts, handing each finished group of records to `on_records` (in input
    order), so a caller can persist progress. `pilot` is an OpenAIServer or a local HFModel (a local one for the
    search methods, whose scorers run in-process)."""
    from wsd_inference.remote_search import bon_remote, cbs_remote

    search = {"bon": lambda b, group_recs: bon_remote(b, pilot, untuned, group_recs, cfg, reward),
              "cbs": lambda b, group_recs: cbs_remote(b, pilot, untuned, group_recs, cfg)}.get(method)
    # a search group is one scorer batch (batch_size prompts x their rows), as on the local backend
    group = group or (cfg.batch_size if search else cfg.batch_size * 4)

    async def main():
        base = RemoteBase(base_server, base_tokenizer) if base_server else None
        try:
            for i in range(0, len(recs), group):
                part = recs[i : i + group]
                on_records(await (search(base, part) if search else wsd_remote(pilot, base, part, cfg, method)))
        finally:
            if base_server:
                await base_server.close()
            if isinstance(pilot, OpenAIServer):
                await pilot.close()

    asyncio.run(main())
