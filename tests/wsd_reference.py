"""A straightforward staged WSD, the way the authors' code runs it: draft everything, score everything in one
forward pass, then re-prefill the base and continue. No caches, batch size 1. The engine must equal it."""

import weakref

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


_COMPLETIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (prompt, n) -> completion


def _completion(model, prompt_text, n):
    """A text completion the way the authors' API calls get one, greedy: up to n tokens after the prompt, ending
    at the model's stop token; each token's text (decoded with the whole prompt; a stop token's is empty, and a
    token that ends inside a character has none: the character goes with the token that completes it), the
    top-1 probability before it, and whether it stopped. Remembered per model: a greedy completion is a function
    of its prompt, and runs of the reference at two thresholds ask for many of the same (no cache in the loop)."""
    seen = _COMPLETIONS.setdefault(model.model, {})
    if (prompt_text, n) not in seen:
        seen[prompt_text, n] = _complete(model, prompt_text, n)
    texts, top1, finished = seen[prompt_text, n]
    return list(texts), list(top1), finished


def _complete(model, prompt_text, n):
    ids, out, texts, top1 = model.encode(prompt_text), [], [], []
    done = model.decode(ids)
    for _ in range(n):
        with torch.no_grad():
            p = torch.softmax(model.model(torch.tensor([ids + out])).logits[0, -1].float(), -1)
        t = int(p.argmax())
        now = model.decode(ids + out + [t])
        texts.append("" if now.endswith("\ufffd") else now[len(done):])
        done = done if now.endswith("\ufffd") else now
        out.append(t)
        top1.append(float(p.max()))
        if t in model.stop_ids:
            return texts, top1, True
    return texts, top1, False


def _repeated_suffix(s):
    """fywalter/nudging utils.py `find_longest_repeated_suffix`: binary search over the suffix length (>= 30)."""
    lo, hi, best = 0, len(s), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if mid >= 30 and s[:-mid].endswith(s[-mid:]):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return s[-best:] if best else None


def nudging(pilot, base, messages, cfg):
    """fywalter/nudging utils.py `completion_with_nudging` with `complete_with_base`, greedy, batch 1: every
    completion asked for whole (16 tokens, by full forward passes). Ours beside theirs: lengths in base tokens,
    base chunks cut at a role marker (`cut_at_marker`), the answer cut at a marker and at the budget."""
    from wsd_inference.nudging_rule import Completion, cut_at_marker

    gamma, chunk, budget = cfg.nudging.threshold, cfg.nudging.completion_tokens, cfg.max_new_tokens
    prefix_base = base_prompt(messages, base.tokenizer.bos_token)
    prefix_nudging = chat_prompt(pilot.tokenizer, messages)
    length = lambda t: len(base.encode(t))  # noqa: E731
    output, rounds, last_words, repeat, stop, writers, base_tokens = "", 0, "", 0, None, [], 0
    pieces = 0
    while length(output) < budget and rounds < cfg.nudging.max_rounds:
        rounds += 1
        text, _, finished = _completion(pilot, prefix_nudging + output, chunk)
        text = "".join(text)
        if finished:
            stop = "nudging_model_stop"
            if text:
                output += text
                writers.append("pilot")
                pieces += 1
            break
        spaces = " " * (len(text) - len(text.lstrip(" ")))
        words = text.lstrip(" ").split(" ")
        wid = 0 if len(words) > 1 else 1
        found, base_info = False, None
        while not found and wid < len(words) - 1:
            wid += 1
            current = " " + words[wid]
            if current == " ":
                continue
            base_info = _completion(base, prefix_base + output + spaces + " ".join(words[:wid]), chunk)
            agrees = (base_info[0][0] != "" or base_info[2]) and current.startswith(base_info[0][0])
            found = agrees or base_info[1][0] >= gamma
        nudging_words = spaces + " ".join(words[:wid])
        if nudging_words == last_words:
            repeat += 1
            if repeat >= 3:
                stop = "repeated_nudging_words"
                break
        else:
            last_words, repeat = nudging_words, 0
        output += nudging_words
        if nudging_words:
            writers.append("pilot")
        pieces += 1
        if not found or "".join(base_info[0]) == "":
            continue
        # complete_with_base
        max_completion = budget - length(output)
        completion_base, tokens_taken = base_info[0][0], 1
        texts, top1 = base_info[0][1:], base_info[1][1:]  # stage 1's completion, its first token taken
        first, found_nudging, finished = True, False, False
        while length(completion_base) < max_completion and not found_nudging:
            if not first:
                texts, top1, finished = _completion(base, prefix_base + output + completion_base, chunk)
            c = cut_at_marker(output + completion_base, Completion(texts, top1, finished))
            if c.text in completion_base:
                break
            pos = next((i for i, p in enumerate(c.top1) if p < gamma), None)
            found_nudging = pos is not None
            new = "".join(c.texts[:pos]) if found_nudging else c.text
            if len(new.split(" ")) > 5 and new in output + completion_base:
                break
            completion_base += new
            tokens_taken += pos if found_nudging else len(c.texts)
            if not first and c.finished:
                break
            first = False
        output += completion_base
        base_tokens += tokens_taken
        if completion_base:
            writers.append("base")
    if stop is None:
        stop = "round" if rounds >= cfg.nudging.max_rounds else "length"
    output = output.strip()
    suffix = _repeated_suffix(output)
    while suffix:
        output = output[: -len(suffix)]
        suffix = _repeated_suffix(output)
    output = cut_at_markers(output)
    ids = base.encode(output)
    if len(ids) > budget:
        output = base.decode(ids[:budget]).strip()
    handoffs = sum(a != b for a, b in zip(writers, writers[1:]))
    return {"response": output, "base_tokens": base_tokens, "handoffs": handoffs, "pilot_pieces": pieces,
            "rounds": rounds, "stop_reason": stop}
