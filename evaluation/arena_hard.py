"""Arena-Hard-Auto as it judges and scores (lmarena/arena-hard-auto: v0.1 as of commit 3071ef9, the last with
`config/judge_config.yaml`; v2.0 as of 196f6b8). Tested equal to their code in tests/arena_hard_reference.py.

- The judge (gen_judgment.py): every answer is judged twice against the baseline's, game 1 with the baseline as
  assistant A, game 2 swapped, by the system prompt of the question's category (utils/judge_utils.JUDGE_SETTINGS:
  `creative_writing` has its own, every other category the original one; verbatim in evaluation/upstream/) and
  the prompt template below, at temperature 0. The verdict is one of five labels in [[...]]: A>>B, A>B, A=B, B>A,
  B>>A.
- Reading the verdict: v0.1 takes the one distinct [[label]] of the judgment; with none it asks the judge once more
  to finish ("continue your judgment ...") and reads both replies; several different labels are no verdict.
  v2.0 reads the judgment upper-cased, [[label]] else [label], and takes the last match.
- The score: v0.1 (show_result.py, utils_math.compute_mle_elo): every game is a battle (a significant win counts 3
  times, a tie is half a win for each), the Bradley-Terry ratings fitted by maximum likelihood with the baseline as
  anchor, the score the predicted win rate against the baseline, its 95% interval from 100 bootstrap resamples of
  the battles of every method pooled (seed 42), as percentiles of the ratings. Every battle here is a method
  against the baseline, so the maximum-likelihood rating is the method's weighted win share in log-odds (the
  closed form of the fit, equal to upstream's iterative one). v2.0 (show_result.print_leaderboard, its default
  without style control): each question gives the method 1, 0.5 or 0 per game (x3 for a significant verdict), the
  score is the mean of 100 bootstrap means (per method), the interval their 5% and 95% quantiles (a 90%
  interval, as upstream prints it); v2.0 scores one category at a time, each against its own baseline.

Where ours differs, on purpose: a game whose verdict cannot be read counts as the method's worst outcome (the
baseline significantly better) and the item is marked unparsed for the coverage floor; upstream drops the game
(v0.1) or the question (v2.0). With every verdict read the figures are upstream's. Style control is not built.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import numpy as np

V01_CATEGORY = "arena-hard-v0.1"  # v0.1's questions carry this category; v2.0's: hard_prompt, creative_writing
TEMPLATE = ("<|User Prompt|>\n{question}\n\n<|The Start of Assistant A's Answer|>\n{answer_a}\n"
            "<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{answer_b}\n"
            "<|The End of Assistant B's Answer|>")
CONTINUE = "continue your judgment and finish by outputting a final verdict label"  # v0.1's second attempt
MAX_TOKENS = {"v0.1": 4096, "v2.0": 16000}  # judge_config.yaml, arena-hard-v2.0.yaml
LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
# the method's share of a game by the label, game 1 (baseline as A) and game 2 (the method as A); v2.0's
# label_to_score also reads the reversed spellings an upper-cased judgment may give
_SCORE = {"A>B": 1.0, "A>>B": 1.0, "A=B": 0.5, "A<<B": 0.0, "A<B": 0.0, "B>A": 0.0, "B>>A": 0.0, "B=A": 0.5,
          "B<<A": 1.0, "B<A": 1.0}
_STRONG = {"A>>B", "A<<B", "B>>A", "B<<A"}
# what a verdict can be: v0.1's battles know the five labels (any other game is dropped upstream); v2.0's
# label_to_score also the reversed spellings. Anything else in [[...]] (e.g. "A>>>B") is no verdict here.
KNOWN = {"v0.1": frozenset(LABELS), "v2.0": frozenset(_SCORE)}
# JUDGE_SETTINGS: each category's baseline model (its answers are what every method is judged against)
BASELINES = {V01_CATEGORY: "gpt-4-0314", "hard_prompt": "o3-mini-2025-01-31", "coding": "o3-mini-2025-01-31",
             "math": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
WORST = ("A>>B", "B>>A")  # game 1, game 2: the baseline significantly better


def protocol(category: str | None) -> str:
    return "v0.1" if category in (None, V01_CATEGORY) else "v2.0"


@lru_cache(maxsize=2)
def _system(name: str) -> str:
    return resources.files("evaluation").joinpath("upstream", f"{name}.txt").read_text(encoding="utf-8").rstrip("\n")


def messages(category: str | None, question: str, answer_a: str, answer_b: str) -> list[dict]:
    """The judge's messages for one game (JUDGE_SETTINGS[category]'s system prompt)."""
    system = _system("arena_hard_judge_creative_writing" if category == "creative_writing" else "arena_hard_judge")
    return [{"role": "system", "content": system},
            {"role": "user", "content": TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)}]


def games(category: str | None, question: str, baseline: str, answer: str) -> list[list[dict]]:
    """Game 1 (the baseline as A) and game 2 (the answer as A)."""
    return [messages(category, question, baseline, answer), messages(category, question, answer, baseline)]


_V01 = re.compile(r"\[\[([AB<>=]+)\]\]")
_V20 = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))


def parse(version: str, replies: list[str]) -> tuple[str | None, bool]:
    """(the label, whether v0.1 should ask once more) from the judge's replies so far."""
    if version == "v0.1":  # gen_judgment.get_score on the joined replies
        found = {m for m in _V01.findall("".join("\n" + r for r in replies)) if m != ""}
        if len(found) == 1:
            label = found.pop().strip("\n")
            return (label if label in KNOWN[version] else None), False
        return None, not found and len(replies) < 2
    for pattern in _V20:  # HEAD gen_judgment.get_score
        found = [m for m in pattern.findall(replies[0].upper()) if m != ""]
        if found:
            label = found[-1].strip("\n")
            return (label if label in KNOWN[version] else None), False
    return None, False


def method_scores(label_1: str, label_2: str, weight: int = 3, version: str = "v0.1") -> list[float]:
    """The method's battles from its two games (1 win, 0.5 tie, 0 loss; a significant verdict `weight` times), in
    upstream's order (the bootstrap draws by position): v0.1 game 1 then game 2 (get_battles_from_row), v2.0 game
    2 then game 1 (load_judgments)."""
    def battles(label: str, flip: bool) -> list[float]:
        s = _SCORE[label]
        return [1.0 - s if flip else s] * (weight if label in _STRONG else 1)

    first, second = battles(label_1, True), battles(label_2, False)
    return first + second if version == "v0.1" else second + first


def _logit(p: np.ndarray) -> np.ndarray:
    """Log-odds, finite: a share of 0 or 1 (no fit converges there; upstream's stops near it) reads as 0 or 1."""
    with np.errstate(divide="ignore"):
        return np.clip(np.log(p) - np.log1p(-p), -50.0, 50.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def score_v01(battles: dict[str, list[float]], rounds: int = 100, seed: int = 42) -> dict[str, tuple]:
    """{method: (score, low, high)} as win rates against the baseline in [0, 1]: Bradley-Terry over the pooled
    battles (1 / 0.5 / 0 for the method), 95% percentile interval of `rounds` bootstrap resamples of the pool (the
    resampling as pandas' DataFrame.sample(frac=1, replace=True) draws it from a RandomState seeded `seed`)."""
    names = sorted(battles)
    who = np.concatenate([np.full(len(battles[m]), i) for i, m in enumerate(names)])
    won = np.concatenate([np.asarray(battles[m], float) for m in names])

    def ratings(idx: np.ndarray) -> np.ndarray:  # the log-odds of each method's win share (the BT MLE here)
        share = np.bincount(who[idx], weights=won[idx], minlength=len(names)) / \
            np.maximum(np.bincount(who[idx], minlength=len(names)), 1)
        return _logit(share)

    rs = np.random.RandomState(seed)
    boot = np.stack([ratings(rs.choice(len(won), size=len(won), replace=True)) for _ in range(rounds)])
    full = ratings(np.arange(len(won)))
    lo, hi = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    return {m: (float(_sigmoid(full[i])), float(_sigmoid(lo[i])), float(_sigmoid(hi[i])))
            for i, m in enumerate(names)}


def score_v20(battles: dict[str, list[float]], rounds: int = 100, seed: int = 0) -> dict[str, tuple]:
    """{method: (score, low, high)} in [0, 1]: the mean of `rounds` bootstrap means of each method's battles, with
    their 5% and 95% quantiles (groupby("model").sample(frac=1, replace=True) drawn per method in name order
    from a RandomState seeded `seed`)."""
    names = sorted(battles)
    rs = np.random.RandomState(seed)
    means = np.empty((rounds, len(names)))
    for r in range(rounds):
        for i, m in enumerate(names):
            x = np.asarray(battles[m], float)
            means[r, i] = x[rs.choice(len(x), size=len(x), replace=True)].mean()
    return {m: (float(means[:, i].mean()), float(np.quantile(means[:, i], 0.05)),
                float(np.quantile(means[:, i], 0.95))) for i, m in enumerate(names)}
