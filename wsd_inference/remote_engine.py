"""Online WSD, and the single-model baselines, with the base model (and optionally the pilot) behind
OpenAI-compatible servers: one prompt at a time, many prompts concurrently (the runner's concern).

WSD per prompt: the pilot's draft streams in; the base scores it (echo + logprobs) when the draft reaches
chunk_size, 2*chunk_size, 4*chunk_size, ... tokens (a server re-scores the whole text each time, so a doubling
schedule keeps scoring within twice the draft while still stopping the draft near the switch point); only
tokens whose base tokenisation is final are used; the base then continues from the kept token ids.
Same semantics and record format as `engine.wsd_batch`. The pilot is a chat model behind a server
(`OpenAIServer`) or in-process (`LocalChat`): both stream the same way.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord, WSDTrace
from pilot_core.models.openai_server import ServedModel
from pilot_core.models.templates import STOP_STRINGS, base_prompt, base_text, cut_at_markers
from pilot_core.models.tokenization import stable_token_count
from pilot_core.prompts import PromptRecord
from wsd_inference.baselines import URIAL_STOP, urial_answer, urial_prefix, urial_prompt
from wsd_inference.switch import decide, kept_context, window_scores

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


def _record(rec: PromptRecord, method: str, response: str, t0: float, **fields) -> MethodRecord:
    total = time.perf_counter() - t0
    return MethodRecord(rec.id, method, response, time_s=total, timing={"prompt_s": round(total, 4)}, **fields)


async def _continue(base: ServedModel, ids: list[int], budget: int, stop: tuple[str, ...], cfg: WSDConfig,
                    rec: PromptRecord, before: str = "", on_text=None) -> tuple[str, int]:
    """The served base's continuation (text, tokens), always streamed: the client's timeout then bounds the wait
    between tokens, not the whole answer (a 2,048-token answer from a loaded 70B server outlasts any per-request
    timeout). With `on_text`, it is called with the answer so far (`before` + the continuation) as text arrives
    (a stream that breaks is the caller's to restart, with the answer); without, a stream that breaks or stalls
    past the timeout is asked again."""
    seed = cfg.served_seed(rec.id)

    async def stream() -> tuple[str, int]:
        text, n = "", 0
        async for text, n in base.server.stream_complete(ids, budget, list(stop), cfg.temperature, cfg.top_p,
                                                         seed):
            if on_text is not None:
                on_text(before + text)
        return text, n

    if on_text is not None:
        on_text(before)
        return await stream()
    return await base.server.retry_broken(stream)


async def wsd_one(pilot, base: ServedModel, rec: PromptRecord, cfg: WSDConfig, stop: tuple[str, ...] = (),
                  on_text=None) -> MethodRecord:
    """One prompt's WSD. The WSD server's extras: `stop`, stop strings for the answer besides the role markers;
    `on_text`, called with the answer so far as the base's continuation streams in."""
    t0 = time.perf_counter()
    prompt = base_prompt(rec.messages, base.tokenizer.bos_token)
    P = len(base.encode(prompt))
    draft, n_pilot, finished, next_check = "", 0, cfg.max_draft_tokens == 0, cfg.chunk_size
    accept, switched, ids, logps = None, False, [], []
    stream = None if finished else pilot.stream_chat(list(rec.messages), cfg.max_draft_tokens, cfg.temperature,
                                                     cfg.top_p, cfg.served_seed(rec.id))
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
            d = decide(logps, finished, cfg.window, cfg.threshold, cfg.max_new_tokens)
            if d is not None:
                accept, switched = d
                break
    finally:
        if stream is not None:
            await stream.aclose()  # closing the stream aborts the pilot's request on the server

    context, budget = kept_context(ids, P, accept, cfg.max_new_tokens)
    kept = context[P:] if accept is not None else []
    cont, n_cont = "", 0
    kept_text = base.decode(kept)
    if budget > 0:
        cont, n_cont = await _continue(base, context, budget, STOP_STRINGS + stop, cfg, rec, kept_text, on_text)
    trace = WSDTrace(draft_text=kept_text, switch_index=accept, switched=switched, kept_draft_tokens=len(kept),
                     window_scores=window_scores(logps[: (accept or 0) + 1], cfg.window))
    return _record(rec, "wsd", cut_at_markers(kept_text + cont, STOP_STRINGS + stop), t0, pilot_tokens=n_pilot,
                   base_tokens=n_cont, trace=trace)


async def _base_alone(base: ServedModel, rec: PromptRecord, cfg: WSDConfig, method: str, prompt: str,
                      stop: tuple[str, ...], on_text=None) -> MethodRecord:
    t0 = time.perf_counter()
    text, n = await _continue(base, base.encode(prompt), cfg.max_new_tokens, stop, cfg, rec, on_text=on_text)
    return _record(rec, method, cut_at_markers(text, stop), t0, base_tokens=n)


async def base_only_one(base: ServedModel, rec: PromptRecord, cfg: WSDConfig, stop: tuple[str, ...] = (),
                        on_text=None) -> MethodRecord:
    """The served base alone with the plain role template."""
    return await _base_alone(base, rec, cfg, "base_only", base_prompt(rec.messages, base.tokenizer.bos_token),
                             STOP_STRINGS + stop, on_text)


async def urial_one(base: ServedModel, rec: PromptRecord, cfg: WSDConfig) -> MethodRecord:
    """The served base with URIAL's in-context prefix."""
    prompt = urial_prompt(rec.messages, urial_prefix(cfg.urial_prefix), base.tokenizer.bos_token)
    record = await _base_alone(base, rec, cfg, "urial", prompt, URIAL_STOP)
    return replace(record, response=urial_answer(record.response))


async def pilot_only_one(pilot, rec: PromptRecord, cfg: WSDConfig) -> MethodRecord:
    """The pilot alone (served, or in-process behind the same interface), for the whole budget."""
    t0 = time.perf_counter()
    text, n = "", 0
    async for delta, _, tokens in pilot.stream_chat(list(rec.messages), cfg.max_new_tokens, cfg.temperature,
                                                    cfg.top_p, cfg.served_seed(rec.id)):
        text, n = text + delta, n + tokens
    return _record(rec, "pilot_only", text.strip(), t0, pilot_tokens=n)
