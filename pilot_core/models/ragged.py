"""A ragged batch: rows of token sequences that grow by different amounts per forward pass, over one shared KV
cache of a transformers model.

WSD scores a different number of draft tokens per prompt, then continues each from a different switch point;
a search keeps some rows and drops others. Shorter rows are padded with masked slots ("holes"), rope positions
are given explicitly, and a row is rewound by masking its last slots, so rewinding never touches the other rows
and never recomputes the shared prefix. Masked slots receive exactly zero attention weight, so results equal an
unpadded run up to float rounding.

The batch owns what its forward passes produced: each row's next-token logits and, where asked for
(`advance`), the log-probability of each of its tokens. Callers read them; they never carry copies.
"""

from __future__ import annotations

from pilot_core.models.loading import HFModel


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


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
        self.next_logits: list = [None] * n_rows  # logits after each row's last live token (None: unknown)
        self.logps: list[list[float]] = [[] for _ in range(n_rows)]  # log p(token j | tokens before), by advance

    def __len__(self) -> int:
        return len(self.tokens)

    def feed(self, new: list[list[int]]):
        """Append `new[r]` to row r (may be empty); returns per row the logits after each appended token (None
        for a row given nothing). A fed row's `next_logits` become the logits after its last new token."""
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
        per_row = [logits[r, : len(toks)] if toks else None for r, toks in enumerate(new)]
        for r, x in enumerate(per_row):
            if x is not None:  # a copy: a view would keep the whole pass's logits alive (rows x width x vocab)
                self.next_logits[r] = x[-1].clone()
        return per_row

    def advance(self, targets: list[list[int] | None], score_from: list[int]) -> list[int]:
        """Make row r's live tokens equal targets[r] (None: leave the row alone) with one batched forward pass,
        and keep `logps[r][j]` = log p(token j | tokens before it) for j >= score_from[r] (0.0 below, where nobody
        needs it: computing it for a long prompt would cost a vocabulary-wide softmax per token).

        Only what is new is fed: a row whose tokens diverge from its target is rewound to the common prefix (and
        one token more, to recover the logits there). Returns per row the first position whose log-prob may have
        changed."""
        import torch

        rows = len(targets)
        feed, start, carry = [[] for _ in range(rows)], [len(t) for t in self.tokens], [0.0] * rows
        for r, target in enumerate(targets):
            if target is not None:
                start[r], _, carry[r] = self._rewind(r, target, len(target))
                feed[r] = target[start[r]:]
        before = list(self.next_logits)  # logits before each row's first new token (None after a rewind)
        out = self.feed(feed)
        for r in range(rows):
            if out[r] is None:
                continue
            pos = range(start[r], start[r] + len(feed[r]))
            # logits before position p: the row's logits before this pass for p == start (when known), else the
            # output at p - 1
            prev = before[r]
            prev_logits = torch.cat([prev[None], out[r][:-1]]) if prev is not None else out[r][:-1]
            first = start[r] if prev is not None else start[r] + 1
            if prev is None:
                self.logps[r].append(carry[r])  # the re-fed token (0.0 for a sequence's first token)
            need = [p for p in range(first, pos.stop) if p >= score_from[r]]
            vals = dict.fromkeys(range(first, pos.stop), 0.0)
            if need:
                rows_idx = torch.tensor([p - first for p in need], device=prev_logits.device)
                toks = torch.tensor([feed[r][p - start[r]] for p in need], device=prev_logits.device)
                lp = torch.log_softmax(prev_logits[rows_idx], dim=-1).gather(1, toks[:, None])[:, 0].tolist()
                vals.update(zip(need, lp))
            self.logps[r].extend(vals[p] for p in range(first, pos.stop))
        return start

    def sync(self, targets: list[list[int] | None], tails: list[int] | None = None) -> list:
        """Make row r's live tokens equal targets[r] (None: leave the row alone) with one batched pass, like
        `advance` without the log-probs; returns per row (None where left alone) the logits before each of its
        last `tails[r]` tokens and after the last: tails[r] + 1 rows (speculation checks proposed tokens fed at
        the end of the target)."""
        import torch

        tails = tails or [0] * len(targets)
        feed, known = [[] for _ in targets], [False] * len(targets)
        for r, target in enumerate(targets):
            if target is not None:
                keep, known[r], _ = self._rewind(r, target, len(target) - tails[r])
                feed[r] = target[keep:]
        before = list(self.next_logits)
        out = self.feed(feed)
        result = []
        for r, target in enumerate(targets):
            if target is None:
                result.append(None)
                continue
            logits = out[r] if out[r] is not None else before[r][None]
            if known[r] and out[r] is not None:
                logits = torch.cat([before[r][None], logits])
            result.append(logits[-(tails[r] + 1):])
        return result

    def _rewind(self, r: int, target: list[int], cap: int) -> tuple[int, bool, float]:
        """The one rule behind `advance` and `sync`: make row r hold the longest prefix of `target` (at most `cap`
        tokens) whose next-token logits are known: the common prefix when the row holds nothing more and its
        logits there are known; else one token less, to be re-fed to recover them. Returns (tokens kept, whether
        the logits after them are known, the log-prob of the token to re-feed: 0.0 where none was kept)."""
        keep = min(common_prefix(self.tokens[r], target), cap)
        if keep == len(self.tokens[r]) and keep > 0 and self.next_logits[r] is not None:
            return keep, True, 0.0
        keep = max(keep - 1, 0)
        carried = self.logps[r][keep] if keep < len(self.logps[r]) else 0.0
        self.truncate(r, keep)
        self.next_logits[r] = None
        return keep, False, carried

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

    def compact_if_sparse(self, slack: int = 64, factor: float = 2.0) -> None:
        """Compact once the cache is wider than `factor` times its longest row plus `slack` slots (holes: rewound or
        padded slots, rows that joined later): a pass attends over every slot, so holes cost; compacting too often
        costs a copy of the cache."""
        if self.mask.shape[1] > factor * max((len(s) for s in self.slots), default=0) + slack:
            self.compact()

    def select(self, rows: list[int]) -> None:
        """Keep the given rows, in this order, repeats allowed (beam search re-indexing)."""
        import torch

        idx = torch.tensor(rows, device=self.m.device)
        self.cache.reorder_cache(idx)
        self.mask = self.mask[idx]
        self.slots = [list(self.slots[r]) for r in rows]
        self.tokens = [list(self.tokens[r]) for r in rows]
        self.next_logits = [self.next_logits[r] for r in rows]
        self.logps = [list(self.logps[r]) for r in rows]

    def extend(self, other: RaggedBatch) -> None:
        """Append `other`'s rows (same model) after this batch's, with their caches, tokens and logits (rows joining
        a running batch: continuous batching). The shorter cache is padded on the right with masked slots; a row's
        slots keep their indices."""
        import torch

        if not len(self):
            self.__dict__.update(other.__dict__)
            return
        width = max(self.mask.shape[1], other.mask.shape[1])

        def padded(x, dim):
            pad = width - x.shape[dim]
            return x if not pad else torch.cat([x, x.new_zeros(*x.shape[:dim], pad, *x.shape[dim + 1:])], dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            if theirs.keys is None or not theirs.keys.numel():
                raise ValueError("rows join a running batch once they hold tokens")
            mine.keys = torch.cat([padded(mine.keys, 2), padded(theirs.keys, 2)])
            mine.values = torch.cat([padded(mine.values, 2), padded(theirs.values, 2)])
        self.mask = torch.cat([padded(self.mask, 1), padded(other.mask, 1)])
        self.slots += other.slots
        self.tokens += other.tokens
        self.next_logits += other.next_logits
        self.logps += other.logps

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only the given rows, in order (finished rows leave: their cache is freed); none: an empty batch."""
        if len(rows) == len(self):
            return
        if rows:
            self.select(rows)
        else:
            self.__init__(self.m, 0)

    def drop(self, r: int, n: int) -> None:
        """Drop the last n live tokens of row r (`truncate`)."""
        self.truncate(r, len(self.tokens[r]) - n)

    def truncate(self, r: int, n: int) -> None:
        """Keep only the first n live tokens of row r (later slots are masked out for good). A row that lost
        tokens has unknown next-token logits until it is fed again."""
        if n < len(self.tokens[r]):
            self.next_logits[r] = None
        for s in self.slots[r][n:]:
            self.mask[r, s] = 0
        del self.slots[r][n:]
        del self.tokens[r][n:]
        del self.logps[r][n:]
