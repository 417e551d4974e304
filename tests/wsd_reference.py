"""A straightforward staged WSD, the way the authors' code runs it: draft everything, score everything in one
forward pass, then re-prefill the base and continue. No caches, batch size 1. The engine must equal it."""

import numpy as np
import torch

from pilot_core.models.templates import base_prompt, base_text, chat_prompt, cut_at_markers, has_marker


def greedy(model, ids, max_new, stop_ids, tokenizer=None, stop_on_marker=False):
    """Greedy decoding by full forward passes (slow, obviously correct)."""
    ids, out = list(ids), []
    for _ in range(max_new):
        with torch.no_grad():
            t = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        out.append(t)
        if t in stop_ids:
            break
        if stop_on_marker and has_marker(tokenizer.decode(out, skip_special_tokens=True)):
            break
    return out


def get_accept_index(probs, threshold, window_size):
    """The authors' rule on probabilities: first window whose geometric mean >= threshold, else last."""
    for i in range(window_size - 1, len(probs)):
        if np.prod(np.asarray(probs[i - window_size + 1 : i + 1], dtype=np.float64)) ** (1 / window_size) >= threshold:
            return i, True
    return len(probs) - 1, False


def staged_wsd(pilot, base, messages, cfg):
    # stage 1: draft (whole)
    p_ids = pilot.encode(chat_prompt(pilot.tokenizer, messages))
    draft = greedy(pilot.model, p_ids, cfg.max_draft_tokens, pilot.stop_ids)
    draft_text = pilot.decode(draft)
    # stage 2: check (one teacher-forced pass of the base over prompt + whole draft)
    prompt = base_prompt(messages, base.tokenizer.bos_token)
    full = base.encode(base_text(prompt, draft_text))
    P = len(base.encode(prompt))
    n = len(full) - P
    if n > 0:
        with torch.no_grad():
            probs = torch.softmax(base.model(torch.tensor([full])).logits[0].double(), -1)
        token_probs = [float(probs[P + i - 1, full[P + i]]) for i in range(n)]
        a, switched = get_accept_index(token_probs, cfg.threshold, cfg.window)
        kept_n = min(a + 1, cfg.max_new_tokens)
        ctx = full[: P + kept_n]
    else:
        a, switched, kept_n, ctx = None, False, 0, full
    # stage 3: target (fresh prefill, continue)
    cont = greedy(base.model, ctx, cfg.max_new_tokens - kept_n, base.stop_ids, base.tokenizer, stop_on_marker=True)
    kept = ctx[P:] if a is not None else []
    return {
        "response": cut_at_markers(base.decode(kept + cont)),
        "draft_text": base.decode(kept),
        "switch_index": a,
        "switched": switched,
        "pilot_tokens": len(draft),
        "base_tokens": len(cont),
        "kept_draft_tokens": len(kept),
    }
