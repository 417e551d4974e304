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
        # only the first max_new_tokens draft tokens are searched: the answer holds no more (switch.py)
        a, switched = get_accept_index(token_probs[: cfg.max_new_tokens], cfg.threshold, cfg.window)
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


def nudging(pilot, base, messages, cfg):
    """Nudging as its rule reads (wsd_inference/nudging.py's docstring), greedy: every token by a full forward
    pass, every text decoded whole."""
    prompt = base_prompt(messages, base.tokenizer.bos_token)
    pilot_prompt = pilot.encode(chat_prompt(pilot.tokenizer, messages))
    models = {"base": base, "pilot": pilot}
    segments = []  # [writer, the writer's context before the run, the run's tokens]
    count = {"base": 0, "pilot": 0}

    def text_of(seg):
        who, before, ids = seg
        return models[who].decode(before + ids)[len(models[who].decode(before)):]

    def answer():
        return "".join(text_of(s) for s in segments)

    def write(who, tok, context):
        if not segments or segments[-1][0] != who:
            segments.append([who, list(context), []])
        segments[-1][2].append(tok)
        count[who] += 1

    def next_logits(m, ids):
        with torch.no_grad():
            return m.model(torch.tensor([ids])).logits[0, -1].float()

    b_ids, p_ids, b_fresh, p_fresh, done, marker, pieces = base.encode(prompt), list(pilot_prompt), True, True, \
        False, False, 0
    while not done:
        if not b_fresh:
            b_ids, b_fresh = base.encode(prompt + answer().lstrip()), True
        logits = next_logits(base, b_ids)
        if float(torch.softmax(logits, -1).max()) >= cfg.nudging_gamma:
            tok = int(logits.argmax())
            write("base", tok, b_ids)
            b_ids, p_fresh = b_ids + [tok], False
            done = tok in base.stop_ids or sum(count.values()) >= cfg.max_new_tokens
            if not done and has_marker(text_of(segments[-1])):
                done = marker = True
            continue
        if not p_fresh:
            p_ids, p_fresh = pilot_prompt + pilot.encode(answer().lstrip()), True
        piece = []
        while True:
            tok = int(next_logits(pilot, p_ids).argmax())
            if cfg.nudging.piece == "word" and piece:
                piece_text = pilot.decode(p_ids)[len(pilot.decode(p_ids[: -len(piece)])):]
                tok_text = pilot.decode(p_ids + [tok])[len(pilot.decode(p_ids)):]
                if piece_text.strip() and (tok_text[:1].isspace() or piece_text[-1:].isspace()):
                    break
            write("pilot", tok, p_ids)
            p_ids, b_fresh = p_ids + [tok], False
            piece.append(tok)
            done = tok in pilot.stop_ids or sum(count.values()) >= cfg.max_new_tokens
            if done or len(piece) >= cfg.nudging.piece_tokens:
                break
        pieces += 1
    text = answer()
    return {"response": cut_at_markers(text) if marker else text.strip(), "pilot_tokens": count["pilot"],
            "base_tokens": count["base"], "handoffs": len(segments) - 1, "pilot_pieces": pieces}
