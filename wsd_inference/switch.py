"""The switch rule (authors' `get_accept_index`) and the context the base continues from.
(Where a draft's base tokens are final: `pilot_core.models.tokenization.stable_token_count`.)

p_i is the base model's probability of draft token i (the relative rule: divided by the pilot's own top-1
probability there, `relative_logps`). The window score s_i is the geometric mean of p_{i-w+1..i}, defined for
i >= w-1. The accept index a is the first i with s_i >= gamma; if no window
qualifies, the whole draft is kept (a = n-1). Draft tokens 0..a are kept. Only the first max_new_tokens draft
tokens are searched (the answer holds no more): a draft that fills the budget is decided there, unswitched.
"""

from __future__ import annotations

import math


def relative_logps(base_logps: list[float], base_ends: list[int], pilot_ends: list[int],
                   pilot_top1: list[float]) -> list[float]:
    """The relative rule's per-token scores (`wsd.rule: relative`): the base's log-probability of draft token j
    minus the log of the pilot's own top-1 probability where it wrote that text (the pilot token that ends at or
    after the base token's last character: the tokenizers may differ), so a window's geometric mean is the base's
    confidence measured against the pilot's. `*_ends`: where each token ends in the pilot's draft text."""
    out, k = [], 0
    for lp, end in zip(base_logps, base_ends):
        while k < len(pilot_ends) - 1 and pilot_ends[k] < end:
            k += 1
        out.append(lp - math.log(max(pilot_top1[k], 1e-12)) if pilot_top1 else lp)
    return out


def window_scores(logprobs: list[float], window: int) -> list[float]:
    """s_i for i = w-1 .. n-1 (so index j of the result is draft token j + w - 1)."""
    out = []
    for i in range(window - 1, len(logprobs)):
        out.append(math.exp(sum(logprobs[i - window + 1 : i + 1]) / window))
    return out


def first_switch(logprobs: list[float], window: int, threshold: float, start: int = 0) -> int | None:
    """The first draft index i >= max(start, w-1) whose window score reaches the threshold, or None."""
    for i in range(max(start, window - 1), len(logprobs)):
        if math.exp(sum(logprobs[i - window + 1 : i + 1]) / window) >= threshold:
            return i
    return None


def decide(logprobs: list[float], finished: bool, window: int, threshold: float, budget: int,
           start: int = 0) -> tuple[int | None, bool] | None:
    """WSD's decision once the base scored the draft's final tokens so far (`logprobs`, one per draft token), the
    one rule of every engine: (a, True) at the first window that reaches the threshold (windows ending before
    `start` were checked already); (budget - 1, False) once the draft fills the answer's budget, since what the
    pilot writes next would never be read; when the draft is `finished` and no window qualified, (n - 1, False)
    for its n tokens, (None, False) for an empty one; None while undecided: the pilot writes on."""
    a = first_switch(logprobs[:budget], window, threshold, start)
    if a is not None:
        return a, True
    if len(logprobs) >= budget:
        return budget - 1, False
    if finished:
        return (len(logprobs) - 1 if logprobs else None), False
    return None


def accept_index(logprobs: list[float], window: int, threshold: float,
                 budget: int | None = None) -> tuple[int | None, bool]:
    """(a, switched) for a whole draft (the staged pipeline): a = first qualifying window end, else n-1; None for
    an empty draft; within `budget` draft tokens when given."""
    return decide(logprobs, True, window, threshold, len(logprobs) + 1 if budget is None else budget)


def kept_context(ids: list[int], prompt_len: int, accept: int | None, max_new_tokens: int) -> tuple[list[int], int]:
    """(what the base continues from, its budget): the prompt and draft tokens 0..a, within the total budget
    (kept draft + continuation). With no accept index (an empty draft) the base reads `ids` (the authors' input:
    the right-stripped prompt) with the whole budget."""
    if accept is None:
        return ids, max_new_tokens
    kept = min(accept + 1, max_new_tokens)
    return ids[: prompt_len + kept], max_new_tokens - kept
