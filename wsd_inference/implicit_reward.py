"""The implicit reward of weak-to-strong search: log pi_tuned(y|x) - log pi_untuned(y|x), summed over the
response tokens (no length normalisation), each small model reading the prompt in its own format and the
response as text (so the base's tokenizer may differ). A finished response gets the small model's
end-of-turn token appended, so stopping is rewarded or penalised too.

`IncrementalScorer` keeps a KV cache per row and per small model: each call feeds only the tokens that became
final since the last call and scores the still-changing tail temporarily; `score_from_scratch` is the plain
definition, and the two agree (tests check it).
"""

from __future__ import annotations

from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch, common_prefix
from pilot_core.models.templates import base_prompt, chat_prompt
from pilot_core.models.tokenization import stable_token_count


def small_prompt(m: HFModel, messages) -> str:
    """A small model's prompt: its chat template if it has one, else the plain role template."""
    if getattr(m.tokenizer, "chat_template", None):
        return chat_prompt(m.tokenizer, messages)
    return base_prompt(messages, m.tokenizer.bos_token)


def _eot(m: HFModel) -> int:
    return m.tokenizer.eos_token_id


def score_from_scratch(m: HFModel, prompt: str, text: str, finished: bool) -> float:
    """sum log p_m(response tokens | prompt), one full forward pass."""
    import torch

    ids = m.encode(prompt + text) + ([_eot(m)] if finished else [])
    start = common_prefix(m.encode(prompt), ids)
    with torch.no_grad():
        logits = m.model(torch.tensor([ids], device=m.device)).logits[0].float()
    targets = torch.tensor(ids[start:], device=logits.device)
    lp = torch.log_softmax(logits[start - 1 : -1], -1).gather(1, targets[:, None])
    return float(lp.sum())


def implicit_reward_from_scratch(tuned: HFModel, untuned: HFModel, messages, text: str, finished: bool) -> float:
    return (score_from_scratch(tuned, small_prompt(tuned, messages), text, finished)
            - score_from_scratch(untuned, small_prompt(untuned, messages), text, finished))


class _Side:
    """One small model's cached view of every row."""

    def __init__(self, m: HFModel, messages_per_row: list):
        self.m = m
        self.prompts = [small_prompt(m, msgs) for msgs in messages_per_row]
        self.prompt_ids = [m.encode(p) for p in self.prompts]
        self.batch = RaggedBatch(m, len(self.prompts))
        self.batch.advance(self.prompt_ids, [len(p) for p in self.prompt_ids])

    def score(self, texts: list[str], finished: list[bool]) -> list[float]:
        rows = len(texts)
        stable, full, start = [None] * rows, [None] * rows, [0] * rows
        for r, (text, done) in enumerate(zip(texts, finished)):
            s = self.prompts[r] + text
            enc = self.m.tokenizer(s, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc.input_ids
            start[r] = common_prefix(self.prompt_ids[r], ids)  # where the response's tokens begin
            if done:
                stable[r] = ids + [_eot(self.m)]
            else:
                stable[r] = ids[: max(start[r], stable_token_count(enc.offset_mapping, s, len(self.prompts[r])))]
                full[r] = ids
        self.batch.advance(stable, start)
        scores = [sum(self.batch.logps[r][start[r]:]) for r in range(rows)]
        tails = [f if f is not None and len(f) > len(stable[r]) else None for r, f in enumerate(full)]
        if any(t is not None for t in tails):  # the tail may still change: score it, then forget it
            self.batch.advance(tails, start)
            for r, t in enumerate(tails):
                if t is not None:
                    scores[r] = sum(self.batch.logps[r][start[r]:])
                    self.batch.truncate(r, len(stable[r]))
        return scores

    def select(self, rows: list[int]) -> None:
        self.batch.select(rows)
        self.prompts = [self.prompts[r] for r in rows]
        self.prompt_ids = [self.prompt_ids[r] for r in rows]


class IncrementalScorer:
    def __init__(self, tuned: HFModel, untuned: HFModel, messages_per_row: list):
        self.tuned, self.untuned = _Side(tuned, messages_per_row), _Side(untuned, messages_per_row)

    def score(self, texts: list[str], finished: list[bool]) -> list[float]:
        a = self.tuned.score(texts, finished)
        b = self.untuned.score(texts, finished)
        return [x - y for x, y in zip(a, b)]

    def select(self, rows: list[int]) -> None:
        self.tuned.select(rows)
        self.untuned.select(rows)
