"""AlpacaEval 2 as AlpacaEval computes it (tatsu-lab/alpaca_eval, src/alpaca_eval at release 0.6.6; the files
named below). Tested equal to their code in tests/alpaca_eval_reference.py.

- The reference answers: GPT-4 Turbo's (`alpaca_eval_gpt4_baseline.json`, generator `gpt4_1106_preview`); the
  eval set's `reference_generator` makes the loader check every row's `generator`.
- The annotator `weighted_alpaca_eval_gpt4_turbo` (evaluators_configs/weighted_alpaca_eval_gpt4_turbo/
  configs.yaml): the prompt alpaca_eval_clf.txt (verbatim in evaluation/upstream/) with the reference as
  `output_1` ("m") and the method's answer as `output_2` ("M"), the two swapped where upstream's seeded rule swaps
  them (processors.RandomSwitchTwoColumnsProcessor); one token at temperature 1 with the 5 most likely tokens'
  log-probabilities; the preference 2 - P(m) / (P(m) + P(M)) (completion_parsers.logprob_parser), un-swapped as
  3 - preference. 1 = the reference is better, 2 = the method's answer; identical answers are 1.5 without a call.
- The win rate: the mean of preference - 1 (metrics/winrate.py).
- The length-controlled win rate (metrics/glm_winrate.py, `length_controlled_v1`): a logistic GLM of the
  preference on tanh(the standardised length difference) + the instruction's difficulty + "not a gamed
  baseline", fitted with L1 and 5-fold grouped cross-validation together with two deliberately verbose / concise
  GPT-4 runs (weight 0.1 each; `df_gamed.csv` on the hub, which also carries each instruction's difficulty), read
  with the length difference at zero. The fit is scikit-learn's (the `alpaca_eval` extra), as upstream's.

An in-process annotator names its top tokens by `decode([id])` (a SentencePiece "▁M" reads "M"); a server names
them its own way: AlpacaEval's parser takes exactly "m" and "M".

Where ours differs, on purpose: an answer for which the annotator's top tokens hold neither "m" nor "M" counts as a
loss (upstream leaves it out) and is marked unparsed for the coverage floor; with every verdict read the figures
are upstream's.
"""

from __future__ import annotations

import math
import random
import warnings
from functools import lru_cache
from importlib import resources

import numpy as np

from pilot_core.errors import UserError

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
# completions_kwargs of the annotator's configs.yaml (upstream sends no seed; ours is fixed so reruns hit the cache)
PARAMS = {"max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "seed": 0, "top_logprobs": 5}
REFERENCE_TOKEN, MODEL_TOKEN = "m", "M"  # output_1 (the reference), output_2 (the method's answer)
TIE = 1.5
WORST = 1.0  # the reference wins


@lru_cache(maxsize=1)
def _template() -> str:
    return resources.files("evaluation").joinpath("upstream", "alpaca_eval_clf.txt").read_text(encoding="utf-8")


def _chatml(prompt: str) -> list[dict]:
    """utils.prompt_to_chatml: the template's <|im_start|>role ... <|im_end|> turns as chat messages."""
    out = []
    for part in prompt.strip().split("<|im_start|>")[1:]:
        role, rest = part.split("\n", 1)
        out.append({"content": rest.split("<|im_end|>", 1)[0].strip(), "role": role.strip()})
    return out


def prompt_messages(instruction: str, output_1: str, output_2: str) -> list[dict]:
    """The annotator's messages. Each placeholder's first occurrence is replaced in turn (utils.make_prompts does
    not use str.format), so an instruction that itself contains "{output_1}" is filled as upstream fills it."""
    prompt = _template()
    for key, value in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        prompt = prompt.replace("{" + key + "}", value, 1)
    return _chatml(prompt)


def is_switched(instruction: str, seed: int = 0) -> bool:
    """Whether upstream shows this instruction's two outputs swapped (utils.random_seeded_choice seeded on the
    switch column's name, the instruction and the annotator's seed)."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def preference(top_logprobs: list[dict]) -> float | None:
    """The preference in [1, 2] from the first token's top log-probabilities (logprob_parser, not binarised);
    None when neither "m" nor "M" is among them (upstream: NaN)."""
    lp = {t["token"]: t["logprob"] for t in top_logprobs if t["token"] in (REFERENCE_TOKEN, MODEL_TOKEN)}
    if not lp:
        return None
    m, big = lp.get(REFERENCE_TOKEN, -math.inf), lp.get(MODEL_TOKEN, -math.inf)
    return 2.0 - math.exp(m - np.logaddexp(m, big))


def annotation(instruction: str, reference: str, answer: str) -> tuple[list[dict] | None, bool]:
    """(the messages to send, whether they show the outputs swapped); None messages for identical outputs."""
    if reference == answer:
        return None, False
    swapped = is_switched(instruction)
    return (prompt_messages(instruction, answer, reference) if swapped else
            prompt_messages(instruction, reference, answer)), swapped


def unswap(pref: float | None, swapped: bool) -> float | None:
    return None if pref is None else 3.0 - pref if swapped else pref


# ------------------------------------------------------------------------------------------ length-controlled
def length_controlled(prefs: list[float], reference_len: list[int], answer_len: list[int], index: list[int],
                      gamed) -> list[float]:
    """Per instruction, the GLM's predicted preference for the method at no length difference (upstream's
    `glm_preference`, in [0, 1]); their mean is the LC win rate. `prefs` in [1, 2]; `index`: each instruction's
    position in AlpacaEval's 805 (what df_gamed's difficulties are indexed by); `gamed`: df_gamed.csv as a
    DataFrame."""
    import pandas as pd

    try:
        import sklearn  # noqa: F401  the fit is scikit-learn's, as upstream's
    except ImportError:
        raise UserError("AlpacaEval's length-controlled win rate needs scikit-learn: pip install "
                        "'pilot-wsd[alpaca_eval]'") from None
    missing = {"index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"} - \
        set(gamed.columns)
    if missing:
        raise UserError(f"alpaca_eval glm_data: not AlpacaEval's df_gamed.csv (no column {sorted(missing)[0]!r})")
    gamed = gamed.drop(columns=["model"], errors="ignore")
    # a Series by row label, looked up by label as upstream does (the first gamed model's rows are 0..804 in order)
    difficulty = gamed.drop_duplicates("index")["instruction_difficulty"]
    unknown = sorted(set(index) - set(difficulty.index))
    if unknown:
        raise UserError(f"alpaca_eval glm_data: instruction {unknown[0]} has no difficulty (df_gamed.csv has "
                        f"{len(difficulty)} instructions): the LC win rate is for AlpacaEval's own 805, in order")
    if len(set(index)) != len(difficulty):  # upstream fits on every instruction: a subset is another figure
        raise UserError(f"alpaca_eval glm_data: {len(set(index))} of its {len(difficulty)} instructions were "
                        "answered: AlpacaEval's length-controlled win rate is fitted on all of them")
    delta = pd.Series(np.asarray(reference_len, float) - np.asarray(answer_len, float))
    own = pd.DataFrame({"preference": np.asarray(prefs, float) - 1.0, "index": index,
                        "std_delta_len": delta / delta.std(),
                        "instruction_difficulty": difficulty.loc[index].to_numpy(), "not_gamed_baseline": True})
    train = pd.concat([gamed[list(own.columns)], own], axis=0, ignore_index=True)
    weight = np.where(train["not_gamed_baseline"].astype(bool), 1.0, 0.2 / 2)  # two gamed baselines share 0.2
    model = _fit(_design(train), train["preference"].to_numpy(float), weight)
    return [float(x) for x in model.predict_proba(_design(own.assign(std_delta_len=0.0)))[:, 1]]


def _design(df) -> np.ndarray:
    """length_controlled_v1's formula without an intercept: tanh(std_delta_len), instruction_difficulty,
    not_gamed_baseline (patsy's columns, in patsy's order)."""
    return np.stack([np.tanh(df["std_delta_len"].to_numpy(float)), df["instruction_difficulty"].to_numpy(float),
                     df["not_gamed_baseline"].astype(float).to_numpy()], axis=1)


def _logloss_continuous(y_true, y_pred, true_prob, true_sample_weight=None):
    """glm_winrate.logloss_continuous: the log loss against soft labels (the CV's score)."""
    y = np.where(y_true == 1, true_prob, 1 - true_prob)
    p = np.clip(y_pred, 1e-15, 1 - 1e-15)
    loss = y * np.log(p) + (1 - y) * np.log(1 - p)
    if true_sample_weight is not None:
        loss = loss * true_sample_weight
    return -np.mean(loss)


def _fit(x: np.ndarray, p: np.ndarray, weight: np.ndarray):
    """glm_winrate.fit_LogisticRegressionCV with soft labels: each row twice (label 1 weighted p, label 0 weighted
    1 - p), L1 (liblinear), 10 C values chosen by 5-fold CV grouped by row, log loss against the soft labels."""
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    keep = ~np.isnan(p)
    x, p, weight = x[keep], p[keep], weight[keep]
    n = len(p)
    xx, yy = np.concatenate([x, x]), np.concatenate([np.ones(n), np.zeros(n)])
    true_prob = np.concatenate([p, 1 - p])
    true_weight = np.concatenate([weight, weight])
    rows = np.concatenate([np.arange(n), np.arange(n)])  # a row's two copies stay in one fold
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8+ deprecates `penalty`: the extra pins <1.10
        scorer = make_scorer(_logloss_continuous, response_method="predict_proba", greater_is_better=False
                             ).set_score_request(true_sample_weight=True, true_prob=True)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=5), scoring=scorer, random_state=123, dual=False,
                                     penalty="l1", solver="liblinear", n_jobs=None, fit_intercept=False)
        model.set_fit_request(sample_weight=True)
        model.fit(xx, yy, sample_weight=true_prob * true_weight, groups=rows, true_sample_weight=true_weight,
                  true_prob=true_prob)
    return model
