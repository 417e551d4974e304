"""Online WSD, and the single-model baselines, with the base model (and optionally the pilot) behind
OpenAI-compatible servers: one prompt at a time, many prompts concurrently (the runner's concern).

WSD per prompt: the pilot's draft streams in; the base scores it with a prompt-log-prob request (echo + logprobs);
the switch rule reads the scores; the base then continues from the kept token ids. A server re-prefills the whole
text for every scoring request (vLLM reads no prefix cache for prompt log-probs), so how often to score is a
choice, `WSDConfig.draft_scoring` (`pilot wsd serve --draft-scoring`), and every choice gives the same answer:
the window scores of a token depend only on the tokens before it, and only tokens whose base tokenisation is
final are scored, so the first window that reaches the threshold is the same whether the draft is scored in
pieces or whole.

- "once" (the default): one scoring request, when the draft is finished or its final base tokens fill the
  answer's budget (the rule reads no token past it). The pilot drafts past the switch point (its tokens are cheap
  next to the base's prefills); the continuation's prompt is a prefix of the scoring request's, which a server
  with automatic prefix caching (vLLM's default) does not prefill again, in whole KV blocks.
- "doubling": a scoring request at chunk_size, 2*chunk_size, 4*chunk_size, ... draft tokens (scoring stays within
  twice the draft), the pilot's stream closed at the first one past the switch point: less drafting, and an
  earlier start for the base, at the cost of more requests and prefills.

Each record counts its requests and tokens per model (`CallFigures`). Same semantics and record format as
`engine.wsd_batch`. The pilot is a chat model behind a server (`OpenAIServer`) or in-process (`LocalChat`): both
stream the same way.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from pilot_core.method_record import CallFigures, MethodRecord, WSDTrace
from pilot_core.models.openai_server import ServedModel, malformed_errors
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
    `on_text`, called with the answer so far as the base's continuation streams in. When the base scores the
    draft: `cfg.draft_scoring` (the module's docstring)."""
    scoring = cfg.draft_scoring
    t0 = time.perf_counter()
    prompt = base_prompt(rec.messages, base.tokenizer.bos_token)
    P = len(base.encode(prompt))
    budget = cfg.max_new_tokens
    draft, n_pilot, finished, next_check = "", 0, cfg.max_draft_tokens == 0, cfg.chunk_size
    accept, switched, ids, logps = None, False, [], []
    scored = prefill = 0  # the base's scoring requests, and the prompt tokens they sent
    usage: dict = {}  # the pilot's, as its server counts them (`prompt_tokens`)
    stream = None if finished else pilot.stream_chat(list(rec.messages), cfg.max_draft_tokens, cfg.temperature,
                                                     cfg.top_p, cfg.served_seed(rec.id), usage=usage)
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
                if finished:  # what the server sends after the finish: its usage (lost if it breaks now)
                    with contextlib.suppress(*malformed_errors()):
                        async for _ in stream:
                            pass
                # once: a look (local tokenization, no request) every chunk, for the budget
                next_check = next_check * 2 if scoring == "doubling" else next_check + cfg.chunk_size
            text = base_text(prompt, draft)
            enc = base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if finished and not draft.strip():  # empty draft: the authors' base input is the stripped prompt
                ids = enc.input_ids
                break
            n = len(enc.input_ids) if finished else stable_token_count(enc.offset_mapping, text, len(prompt))
            if scoring == "once" and not finished and n - P < budget:
                continue  # the pilot writes on: nothing is scored before the draft is finished or fills the budget
            if n > P:
                ids = enc.input_ids[: min(n, P + budget)]  # the rule reads no draft token past the budget
                logps = [x if x is not None else float("-inf") for x in (await base.server.score(ids))[P:]]
                scored, prefill = scored + 1, prefill + len(ids)
            d = decide(logps, finished, cfg.window, cfg.threshold, budget)
            if d is not None:
                accept, switched = d
                break
    finally:
        if stream is not None:
            await stream.aclose()  # closing the stream aborts the pilot's request on the server

    context, rest = kept_context(ids, P, accept, budget)
    kept = context[P:] if accept is not None else []
    cont, n_cont = "", 0
    kept_text = base.decode(kept)
    if rest > 0:
        cont, n_cont = await _continue(base, context, rest, STOP_STRINGS + stop, cfg, rec, kept_text, on_text)
    calls = CallFigures(pilot_requests=int(stream is not None),
                        pilot_prefill_tokens=usage.get("prompt_tokens") if stream is not None else 0,
                        pilot_decode_tokens=n_pilot, base_requests=scored + (rest > 0), base_scoring_requests=scored,
                        base_prefill_tokens=prefill + len(context) * (rest > 0),
                        # the continuation's prompt is the (last) scored prompt's prefix
                        base_reusable_tokens=len(context) if rest > 0 and scored else 0, base_decode_tokens=n_cont)
    trace = WSDTrace(draft_text=kept_text, switch_index=accept, switched=switched, kept_draft_tokens=len(kept),
                     window_scores=window_scores(logps[: (accept or 0) + 1], cfg.window))
    return _record(rec, "wsd", cut_at_markers(kept_text + cont, STOP_STRINGS + stop), t0, pilot_tokens=n_pilot,
                   base_tokens=n_cont, trace=trace, calls=calls)


async def _base_alone(base: ServedModel, rec: PromptRecord, cfg: WSDConfig, method: str, prompt: str,
                      stop: tuple[str, ...], on_text=None) -> MethodRecord:
    t0 = time.perf_counter()
    ids = base.encode(prompt)
    text, n = await _continue(base, ids, cfg.max_new_tokens, stop, cfg, rec, on_text=on_text)
    calls = CallFigures(base_requests=1, base_prefill_tokens=len(ids), base_decode_tokens=n)
    return _record(rec, method, cut_at_markers(text, stop), t0, base_tokens=n, calls=calls)


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
    usage: dict = {}
    async for delta, _, tokens in pilot.stream_chat(list(rec.messages), cfg.max_new_tokens, cfg.temperature,
                                                    cfg.top_p, cfg.served_seed(rec.id), usage=usage):
        text, n = text + delta, n + tokens
    calls = CallFigures(pilot_requests=1, pilot_prefill_tokens=usage.get("prompt_tokens"), pilot_decode_tokens=n)
    return _record(rec, "pilot_only", text.strip(), t0, pilot_tokens=n, calls=calls)
