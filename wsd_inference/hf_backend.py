"""The transformers backend: safe loading, and a ragged batch that shares one KV cache.

`RaggedBatch` lets every row of a batch advance by a different number of tokens per forward pass (WSD scores
a different number of draft tokens per prompt, then continues from a different switch point). Shorter rows
are padded with masked slots ("holes"), rope positions are given explicitly, and a row is rewound by masking
its last slots, so rewinding never touches the other rows and never recomputes the shared prefix.
Masked slots receive exactly zero attention weight, so results equal an unpadded run up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.model_files import check_local_dir, is_local
from wsd_inference.prompts import PILOT_STOP_TOKENS

@dataclass
class HFModel:
    """A causal LM and its tokenizer, with the token ids it stops at."""

    path: str
    model: object
    tokenizer: object
    stop_ids: frozenset[int]
    pad_id: int
    device: str = "cpu"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_hf_model(path: str, role: str = "model", device: str = "cpu", dtype: str = "float32",
                  trust_remote_code: bool = False, allow_pickle: bool = False,
                  need_chat_template: bool = False) -> HFModel:
    """Load a causal LM for decoding. Bad paths, non-causal-LM configs and pickled weights are UserErrors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if is_local(path):
        check_local_dir(Path(path), allow_pickle)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {path}: cannot read the model config: {str(e).splitlines()[0]}") from None
    archs = getattr(config, "architectures", None) or []
    causal_arch = any("CausalLM" in a or "LMHeadModel" in a for a in archs)
    if (archs and not causal_arch) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if not (trust_remote_code and causal_arch):
            what = f"{config.model_type!r} ({', '.join(archs)})" if archs else repr(config.model_type)
            raise UserError(f"{role} {path}: model type {what} is not a causal LM")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
            use_safetensors=not allow_pickle or None,
        )
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {path}: cannot load: {str(e).splitlines()[0]}") from None
    if need_chat_template and not getattr(tok, "chat_template", None):
        raise UserError(f"{role} {path}: the tokenizer has no chat template (a pilot must be a chat model)")
    model.to(device).eval()
    stop = set()
    for tid in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        stop.update(tid if isinstance(tid, list) else [tid] if tid is not None else [])
    if need_chat_template:  # a chat pilot also stops at any end-of-turn token it knows (authors' list)
        vocab = tok.get_vocab()
        stop.update(vocab[t] for t in PILOT_STOP_TOKENS if t in vocab)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (min(stop) if stop else 0)
    return HFModel(path=path, model=model, tokenizer=tok, stop_ids=frozenset(stop), pad_id=pad, device=device)


class RaggedBatch:
    """Rows of token sequences that grow by different amounts per step over one shared KV cache."""

    def __init__(self, m: HFModel, n_rows: int):
        import torch
        from transformers import DynamicCache

        self.m = m
        self.cache = DynamicCache(config=m.model.config)
        self.mask = torch.zeros(n_rows, 0, dtype=torch.long, device=m.device)
        self.slots: list[list[int]] = [[] for _ in range(n_rows)]  # cache slot of each live token
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]  # the live tokens (positions 0..n-1)

    def feed(self, new: list[list[int]]):
        """Append `new[r]` to row r (may be empty); returns per row the logits after each appended token."""
        import torch

        width = max(len(x) for x in new)
        if width == 0:
            return [None] * len(new)
        rows = len(new)
        ids = torch.full((rows, width), self.m.pad_id, dtype=torch.long)
        live = torch.zeros(rows, width, dtype=torch.long)
        pos = torch.zeros(rows, width, dtype=torch.long)
        start = self.mask.shape[1]
        for r, toks in enumerate(new):
            n, k = len(self.tokens[r]), len(toks)
            if k:
                ids[r, :k] = torch.tensor(toks)
                live[r, :k] = 1
                pos[r, :k] = torch.arange(n, n + k)
            pos[r, k:] = n + k - 1 if n + k else 0  # holes: position irrelevant, their keys are masked
            self.slots[r].extend(range(start, start + k))
            self.tokens[r].extend(toks)
        self.mask = torch.cat([self.mask, live.to(self.m.device)], dim=1)
        with torch.no_grad():
            out = self.m.model(input_ids=ids.to(self.m.device), attention_mask=self.mask,
                               position_ids=pos.to(self.m.device), past_key_values=self.cache, use_cache=True)
        logits = out.logits.float()
        return [logits[r, : len(toks)] if toks else None for r, toks in enumerate(new)]

    def compact(self) -> None:
        """Drop holes and rewound slots: gather each row's live slots into a dense, left-padded cache, so later
        steps attend over live tokens only. Positions are already baked into the cached keys."""
        import torch

        width = max(len(s) for s in self.slots)
        if width == self.mask.shape[1]:
            return
        rows = len(self.slots)
        index = torch.zeros(rows, width, dtype=torch.long)
        mask = torch.zeros(rows, width, dtype=torch.long)
        for r, slots in enumerate(self.slots):
            if slots:
                index[r, width - len(slots):] = torch.tensor(slots)
                index[r, : width - len(slots)] = slots[0]  # padding copies a live slot; it stays masked
                mask[r, width - len(slots):] = 1
            self.slots[r] = list(range(width - len(slots), width))
        index = index.to(self.m.device)
        for layer in self.cache.layers:
            if layer.keys is None or not layer.keys.numel():
                continue
            b, h, _, d = layer.keys.shape
            gather = index[:, None, :, None].expand(b, h, width, d)
            layer.keys = layer.keys.gather(2, gather)
            layer.values = layer.values.gather(2, index[:, None, :, None].expand(b, h, width,
                                                                                   layer.values.shape[-1]))
        self.mask = mask.to(self.m.device)

    def select(self, rows: list[int]) -> None:
        """Keep the given rows, in this order, repeats allowed (beam search re-indexing)."""
        import torch

        idx = torch.tensor(rows, device=self.m.device)
        self.cache.reorder_cache(idx)
        self.mask = self.mask[idx]
        self.slots = [list(self.slots[r]) for r in rows]
        self.tokens = [list(self.tokens[r]) for r in rows]

    def truncate(self, r: int, n: int) -> None:
        """Keep only the first n live tokens of row r (later slots are masked out for good)."""
        for s in self.slots[r][n:]:
            self.mask[r, s] = 0
        del self.slots[r][n:]
        del self.tokens[r][n:]


def pick_token(logits, temperature: float, top_p: float, generator, top_k: int = 0) -> int:
    """Greedy when temperature == 0; else sampling after transformers' temperature / top-k / top-p warpers,
    with the row's own generator (so a row's samples do not depend on its batch)."""
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    from transformers import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    scores = warpers(None, logits[None].float())[0]
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def advance(batch: RaggedBatch, targets: list[list[int] | None], last: list, logps: list[list[float]],
            score_from: list[int]) -> list[int]:
    """Make row r's live tokens equal targets[r] (None: leave the row alone) with one batched forward pass.

    Only what is new is fed: a row whose tokens diverge from its target is rewound to the common prefix (and
    one token more, to recover the logits there). last[r] holds the logits after the row's last token (None
    when unknown); logps[r][j] becomes log p(token j | tokens before it) for j >= score_from[r] (0.0 below,
    where nobody needs it: computing it for a long prompt would cost a vocabulary-wide softmax per token).
    Returns per row the first position whose log-prob may have changed.
    """
    import torch

    rows = len(targets)
    feed, start, carry = [[] for _ in range(rows)], [len(t) for t in batch.tokens], [0.0] * rows
    for r, target in enumerate(targets):
        if target is None:
            continue
        fed = batch.tokens[r]
        keep = common_prefix(fed, target)
        if keep == len(fed) and fed and last[r] is not None:
            start[r] = keep
        else:  # rewind (or unknown last logits): re-feed from one token back, keeping that token's log-prob
            start[r] = max(keep - 1, 0)
            carry[r] = logps[r][start[r]] if start[r] < len(logps[r]) else 0.0
            batch.truncate(r, start[r])
            last[r] = None
        del logps[r][start[r]:]
        feed[r] = target[start[r]:]
    out = batch.feed(feed)
    for r in range(rows):
        if out[r] is None:
            continue
        pos = range(start[r], start[r] + len(feed[r]))
        # logits before position p: last[r] for p == start (when known), else the output at p - 1
        prev = [last[r]] if last[r] is not None else []
        prev_logits = torch.cat([torch.stack(prev), out[r][:-1]]) if prev else out[r][:-1]
        first = start[r] if prev else start[r] + 1
        if not prev:
            logps[r].append(carry[r])  # the re-fed token (0.0 for a sequence's first token)
        need = [p for p in range(first, pos.stop) if p >= score_from[r]]
        vals = dict.fromkeys(range(first, pos.stop), 0.0)
        if need:
            rows_idx = torch.tensor([p - first for p in need])
            toks = torch.tensor([feed[r][p - start[r]] for p in need])
            lp = torch.log_softmax(prev_logits[rows_idx], dim=-1).gather(1, toks[:, None])[:, 0].tolist()
            vals.update(zip(need, lp))
        logps[r].extend(vals[p] for p in range(first, pos.stop))
        last[r] = out[r][-1]
    return start
