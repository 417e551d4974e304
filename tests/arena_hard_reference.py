"""Arena-Hard-Auto as its authors score it: the test reference for the project's Arena-Hard judging and scoring.

Ported from lmarena/arena-hard-auto at two commits:
- v0.1 = 3071ef9 (the last commit with the v0.1 layout): gen_judgment.py, show_result.py, utils_math.py,
  config/judge_config.yaml;
- v2.0 = HEAD 196f6b8: gen_judgment.py, show_result.py, utils/judge_utils.py, config/arena-hard-v2.0.yaml.
Upstream functions are copied whole, verbatim; only the imports and the I/O (files, prints, tqdm) are adapted, and
each copied function's docstring names its upstream file and function. The functions the tests call are the ones
under "What the tests call".
"""

from __future__ import annotations

import inspect
import math
import re
from collections import defaultdict

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

# ----------------------------------------------------------------------------------------------------------------
# v0.1 (3071ef9): config/judge_config.yaml, gen_judgment.py
# ----------------------------------------------------------------------------------------------------------------

# config/judge_config.yaml: regex_pattern, number_of_judgment_attempts, system_prompt, prompt_template (verbatim)
REGEX_PATTERN_V01 = r"\[\[([AB<>=]+)\]\]"
NUMBER_OF_JUDGMENT_ATTEMPTS_V01 = 2
SYSTEM_PROMPT_V01 = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is "
    "to evaluate which assistant's answer is better.\n\nBegin your evaluation by generating your own answer to the "
    "prompt. You must provide your answers before judging any answers.\n\nWhen evaluating the assistants' answers, "
    "compare both assistants' answers with your answer. You must identify and correct any mistakes or inaccurate "
    "information.\n\nThen consider if the assistant's answers are helpful, relevant, and concise. Helpful means the "
    "answer correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or "
    "more than one interpretation, it is more helpful and appropriate to ask for clarifications or more information "
    "from the user than providing an answer based on assumptions. Relevant means all parts of the response closely "
    "connect or are appropriate to what is being asked. Concise means the response is clear and not verbose or "
    "excessive.\n\nThen consider the creativity and novelty of the assistant's answers when needed. Finally, "
    "identify any missing important information in the assistants' answers that would be beneficial to include "
    "when responding to the user prompt.\n\nAfter providing your explanation, you must output only one of the "
    "following choices as your final verdict with a label:\n\n1. Assistant A is significantly better: [[A>>B]]\n2. "
    "Assistant A is slightly better: [[A>B]]\n3. Tie, relatively the same: [[A=B]]\n4. Assistant B is slightly "
    "better: [[B>A]]\n5. Assistant B is significantly better: [[B>>A]]\n\nExample output: \"My final verdict is "
    "tie: [[A=B]]\"."
)
PROMPT_TEMPLATE_V01 = [
    "<|User Prompt|>\n{question_1}\n\n<|The Start of Assistant A's Answer|>\n{answer_1}\n<|The End of Assistant "
    "A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{answer_2}\n<|The End of Assistant B's Answer|>"
]
# gen_judgment.py judgment(): the user turn appended when no verdict label was found
CONTINUE_V01 = "continue your judgment and finish by outputting a final verdict label"


def get_score_v01(judgment, pattern, pairwise=True):
    """Upstream: gen_judgment.py (v0.1, 3071ef9) get_score (verbatim). Returns (label, try_again) when pairwise."""
    matches = pattern.findall(judgment)
    matches = [m for m in matches if m != ""]
    if len(set(matches)) == 0:
        return None, True
    elif len(set(matches)) == 1:
        if pairwise:
            return matches[0].strip("\n"), False
        return int(matches[0])
    else:
        return None, False


# ----------------------------------------------------------------------------------------------------------------
# v2.0 (196f6b8): utils/judge_utils.py, config/arena-hard-v2.0.yaml, gen_judgment.py
# ----------------------------------------------------------------------------------------------------------------

# utils/judge_utils.py (verbatim; identical to v0.1's system_prompt)
OG_ARENA_HARD_PROMPT = SYSTEM_PROMPT_V01

JUDGE_SETTINGS = {
    "hard_prompt": {
        "baseline": "o3-mini-2025-01-31",
        "system_prompt": OG_ARENA_HARD_PROMPT,
    },
    "coding": {
        "baseline": "o3-mini-2025-01-31",
        "system_prompt": OG_ARENA_HARD_PROMPT,
    },
    "math": {
        "baseline": "o3-mini-2025-01-31",
        "system_prompt": OG_ARENA_HARD_PROMPT,
    },
    "creative_writing": {
        "baseline": "gemini-2.0-flash-001",
        "system_prompt": (
            "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
            "assistants to the user prompt displayed below. You will be given assistant A's answer and assistant "
            "B's answer. Your job is to evaluate which assistant's answer is better.\n\nWhen evaluating the "
            "assistants' answers, compare both assistants' answers. You must identify and correct any mistakes or "
            "inaccurate information.\n\nThen consider if the assistant's answers are helpful, relevant, and concise. "
            "Helpful means the answer correctly responds to the prompt or follows the instructions. Note when user "
            "prompt has any ambiguity or more than one interpretation, it is more helpful and appropriate to ask for "
            "clarifications or more information from the user than providing an answer based on assumptions. "
            "Relevant means all parts of the response closely connect or are appropriate to what is being asked. "
            "Concise means the response is clear and not verbose or excessive.\n\nThen consider the creativity and "
            "novelty of the assistant's answers when needed. Finally, identify any missing important information in "
            "the assistants' answers that would be beneficial to include when responding to the user prompt.\n\n"
            "After providing your explanation, you must output only one of the following choices as your final "
            "verdict with a label:\n\n1. Assistant A is significantly better: [[A>>B]]\n2. Assistant A is slightly "
            "better: [[A>B]]\n3. Tie, relatively the same: [[A=B]]\n4. Assistant B is slightly better: [[B>A]]\n5. "
            "Assistant B is significantly better: [[B>>A]]\n\nExample output: \"My final verdict is tie: [[A=B]]\"."
        ),
    },
    "arena-hard-v0.1": {
        "baseline": "gpt-4-0314",
        "system_prompt": OG_ARENA_HARD_PROMPT,
    },
}

# config/arena-hard-v2.0.yaml: regex_patterns, prompt_template (verbatim)
REGEX_PATTERNS_V20 = [r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"]
PROMPT_TEMPLATE_V20 = (
    "<|User Prompt|>\n{QUESTION}\n\n<|The Start of Assistant A's Answer|>\n{ANSWER_A}\n<|The End of Assistant A's "
    "Answer|>\n\n<|The Start of Assistant B's Answer|>\n{ANSWER_B}\n<|The End of Assistant B's Answer|>"
)


def get_score_v20(judgment, patterns):
    """Upstream: gen_judgment.py (v2.0, 196f6b8) get_score (verbatim)."""
    import re

    for pattern in patterns:
        pattern = re.compile(pattern)

        matches = pattern.findall(judgment.upper())
        matches = [m for m in matches if m != ""]

        if len(set(matches)) > 0:
            return matches[-1].strip("\n")
    return None


# ----------------------------------------------------------------------------------------------------------------
# v0.1 (3071ef9): show_result.py, utils_math.py
# ----------------------------------------------------------------------------------------------------------------


def get_battles_from_row(row, first_game_only, multiplier, baseline_model, metadata=None):
    """Upstream: show_result.py (v0.1, 3071ef9) get_battles_from_row (verbatim)."""
    results = []
    output = {"question_id": row["question_id"],
              "model_a": baseline_model,
              "model_b": row["model"]}

    game = row["games"][0]
    weight = 1
    if game["score"] == "A=B":
        output["winner"] = "tie"
    elif game["score"] == "A>B":
        output["winner"] = "model_a"
    elif game["score"] == "A>>B":
        output["winner"] = "model_a"
        weight = multiplier
    elif game["score"] == "B>A":
        output["winner"] = "model_b"
    elif game["score"] == "B>>A":
        output["winner"] = "model_b"
        weight = multiplier
    else:
        weight = 0

    # add conv_metadata for style control
    if metadata:
        output["conv_metadata"] = {
            "sum_assistant_a_tokens": metadata[baseline_model][row["question_id"]]["conv_metadata"]["token_len"],
            "sum_assistant_b_tokens": metadata[row["model"]][row["question_id"]]["conv_metadata"]["token_len"],
            "header_count_a": metadata[baseline_model][row["question_id"]]["conv_metadata"]["header_count"],
            "header_count_b": metadata[row["model"]][row["question_id"]]["conv_metadata"]["header_count"],
            "list_count_a": metadata[baseline_model][row["question_id"]]["conv_metadata"]["list_count"],
            "list_count_b": metadata[row["model"]][row["question_id"]]["conv_metadata"]["list_count"],
            "bold_count_a": metadata[baseline_model][row["question_id"]]["conv_metadata"]["bold_count"],
            "bold_count_b": metadata[row["model"]][row["question_id"]]["conv_metadata"]["bold_count"],
        }

    if weight:
        results += [output] * weight

    if first_game_only:
        return results

    # game 2
    output = {"question_id": row["question_id"],
            "model_a": baseline_model,
            "model_b": row["model"]}

    game = row["games"][1]

    weight = 1
    if game["score"] == "A=B":
        output["winner"] = "tie"
    elif game["score"] == "A>B":
        output["winner"] = "model_b"
    elif game["score"] == "A>>B":
        output["winner"] = "model_b"
        weight = multiplier
    elif game["score"] == "B>A":
        output["winner"] = "model_a"
    elif game["score"] == "B>>A":
        output["winner"] = "model_a"
        weight = multiplier
    else:
        weight = 0

    if metadata:
        output["conv_metadata"] = {
            "sum_assistant_a_tokens": metadata[baseline_model][row["question_id"]]["conv_metadata"]["token_len"],
            "sum_assistant_b_tokens": metadata[row["model"]][row["question_id"]]["conv_metadata"]["token_len"],
            "header_count_a": metadata[baseline_model][row["question_id"]]["conv_metadata"]["header_count"],
            "header_count_b": metadata[row["model"]][row["question_id"]]["conv_metadata"]["header_count"],
            "list_count_a": metadata[baseline_model][row["question_id"]]["conv_metadata"]["list_count"],
            "list_count_b": metadata[row["model"]][row["question_id"]]["conv_metadata"]["list_count"],
            "bold_count_a": metadata[baseline_model][row["question_id"]]["conv_metadata"]["bold_count"],
            "bold_count_b": metadata[row["model"]][row["question_id"]]["conv_metadata"]["bold_count"],
        }

    if weight:
        results += [output] * weight

    return results


def compute_mle_elo(df, SCALE=400, BASE=10, INIT_RATING=1000, baseline_model="gpt-4-0314"):
    """Upstream: utils_math.py (v0.1, 3071ef9) compute_mle_elo (verbatim)."""
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)

    # duplicate battles
    df = pd.concat([df, df], ignore_index=True)
    p = len(models.index)
    n = df.shape[0]

    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)

    # one A win => two A win
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0

    # one tie => one A win + one B win
    # find tie + tie (both bad) index
    tie_idx = (df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")
    tie_idx[len(tie_idx)//2:] = False
    Y[tie_idx] = 1.0

    lr = LogisticRegression(fit_intercept=False, penalty=None, tol=1e-8)
    lr.fit(X,Y)

    elo_scores = SCALE * lr.coef_[0] + INIT_RATING

    # set anchor as gpt-4-0314 = 1000
    if baseline_model in models.index:
        elo_scores += 1000 - elo_scores[models[baseline_model]]
    return pd.Series(elo_scores, index=models.index).sort_values(ascending=False)


def get_bootstrap_result(battles, func_compute_elo, num_round, baseline_model="gpt-4-0314"):
    """Upstream: utils_math.py (v0.1, 3071ef9) get_bootstrap_result (verbatim but for tqdm's progress bar).

    Kept as upstream has it: `kwargs[baseline_model] = baseline_model` is guarded by `baseline_model in
    <parameter names>`, which is never true, so the bootstrap fits always anchor at compute_mle_elo's default
    "gpt-4-0314"; with any other baseline the bootstrap ratings are not anchored to it."""
    rows = []
    kwargs = {}
    if baseline_model in inspect.signature(func_compute_elo).parameters:
        kwargs[baseline_model] = baseline_model
    for _ in range(num_round):
        rows.append(func_compute_elo(battles.sample(frac=1.0, replace=True), **kwargs))
    df = pd.DataFrame(rows)
    return df[df.median().sort_values(ascending=False).index]


def predict_win_rate(elo_ratings, SCALE=400, BASE=10, INIT_RATING=1000):
    """Upstream: utils_math.py (v0.1, 3071ef9) predict_win_rate (verbatim but np.NAN -> np.nan: NumPy 2 removed
    the alias; the diagonal is filled by get_win_rate_column anyway)."""
    names = sorted(list(elo_ratings.keys()))
    wins = defaultdict(lambda: defaultdict(lambda: 0))
    for a in names:
        for b in names:
            ea = 1 / (1 + BASE ** ((elo_ratings[b] - elo_ratings[a]) / SCALE))
            wins[a][b] = ea
            wins[b][a] = 1 - ea

    data = {
        a: [wins[a][b] if a != b else np.nan for b in names]
        for a in names
    }

    df = pd.DataFrame(data, index=names)
    df.index.name = "model_a"
    df.columns.name = "model_b"
    return df.T


def get_win_rate_column(df, column, baseline="gpt-4-0314"):
    """Upstream: utils_math.py (v0.1, 3071ef9) get_win_rate_column (verbatim)."""
    to_dict = df[["model", column]].set_index("model").to_dict()[column]
    win_rate_table = predict_win_rate(to_dict)
    return win_rate_table[baseline].fillna(0.5).apply(lambda x: round(x * 100, 2))


# ----------------------------------------------------------------------------------------------------------------
# v2.0 (196f6b8): show_result.py
# ----------------------------------------------------------------------------------------------------------------


def load_judgments(data, weight=3):
    """Upstream: show_result.py (v2.0, 196f6b8) load_judgments (verbatim from the null filter on; adapted: `data` is
    the DataFrame upstream builds by concatenating data/<benchmark>/model_judgment/<judge>/*.jsonl, and the print is
    dropped)."""
    # if data.model.isin(judge_names).any():
    #     print(f"WARNING: {judge_names} is already in the data. Removing it.")
    #     data = data[~data.model.isin(judge_names)].reset_index(drop=True)

    null_indices = data.games.map(
        lambda x: x[0] is None or x[1] is None or x[0]['score'] is None or x[1]['score'] is None
    )
    _data = data[~null_indices].reset_index(drop=True)

    # map label to score
    label_to_score = {
        "A>B": [1],
        "A>>B": [1] * weight,
        "A=B": [0.5],
        "A<<B": [0] * weight,
        "A<B": [0],
        "B>A": [0],
        "B>>A": [0] * weight,
        "B=A": [0.5],
        "B<<A": [1] * weight,
        "B<A": [1],
    }

    _data['scores'] = _data.games.map(
        lambda x: label_to_score[x[1]['score']] + [1 - s for s in label_to_score[x[0]['score']]]
    )

    battles = _data[['uid', 'model', 'category', 'scores']].explode('scores').reset_index(drop=True)

    return battles


def format_confidence_interval(mean_scores, lower_scores, upper_scores, baseline=None):
    """Upstream: show_result.py (v2.0, 196f6b8) format_confidence_interval (verbatim)."""
    leaderboard = pd.merge(
        mean_scores,
        lower_scores,
        on="model"
    ).merge(
        upper_scores,
        on="model"
    )

    leaderboard["Scores (%)"] = leaderboard["scores"].map(lambda x: round(x * 100, 1))

    leaderboard["CI (%)"] = leaderboard.apply(
        lambda row: (  # one f-string upstream, split here for the line length
            f"(-{round((row['scores'] - row['lower']) * 100, 1)} / "
            f"+{round((row['upper'] - row['scores']) * 100, 1)})"
        ),
        axis=1
    )

    _leaderboard = leaderboard.rename(
        columns={"model": "Model"}
    ).drop(
        columns=["lower", "upper", "scores"]
    )

    if baseline:
        _leaderboard = pd.concat(
            [_leaderboard, pd.DataFrame({"Model": baseline, "Scores (%)": 50.0, "CI (%)": "(-0.0 / +0.0)"}, index=[0])]
        )

    return _leaderboard.sort_values(by="Scores (%)", ascending=False).reset_index(drop=True)


def print_leaderboard(battles, category, num_rounds=100):
    """Upstream: show_result.py (v2.0, 196f6b8) print_leaderboard (verbatim up to the leaderboard; adapted: the
    100 rounds are `num_rounds`, no tqdm, and it returns (leaderboard, mean_scores, lower_scores, upper_scores)
    instead of printing)."""
    baseline = JUDGE_SETTINGS[category]["baseline"]

    _battles = battles.drop(columns=['category'])[['model', 'scores']]

    # remove model path
    _battles['model'] = _battles['model'].map(lambda x: x.split('/')[-1])

    bootstraps = pd.concat([
        _battles.groupby("model").sample(frac=1.0, replace=True).groupby("model").mean()
        for _ in range(num_rounds)
    ])

    bootstraps["scores"] = bootstraps["scores"].astype(float)

    mean_scores = bootstraps.groupby("model").mean().reset_index()
    lower_scores = bootstraps.groupby("model").quantile(0.05).reset_index().rename(columns={"scores": "lower"})
    upper_scores = bootstraps.groupby("model").quantile(0.95).reset_index().rename(columns={"scores": "upper"})

    _leaderboard = format_confidence_interval(mean_scores, lower_scores, upper_scores, baseline)

    return _leaderboard, mean_scores, lower_scores, upper_scores


# ----------------------------------------------------------------------------------------------------------------
# What the tests call
# ----------------------------------------------------------------------------------------------------------------


def parse_v01(texts: list[str]) -> str | None:
    """The verdict v0.1 records for one game, from the judge's first reply and, when upstream asked for it (no label
    in the first reply), the reply to CONTINUE_V01.

    Upstream: gen_judgment.py (v0.1, 3071ef9) judgment(): up to number_of_judgment_attempts (2) calls; each reply is
    appended as "\\n" + reply to the judgment text and get_score runs on the whole text so far; it asks again only
    when no label was found (several different labels: None, no retry). A continuation given when upstream would not
    have asked is ignored."""
    assert 1 <= len(texts) <= NUMBER_OF_JUDGMENT_ATTEMPTS_V01
    pattern = re.compile(REGEX_PATTERN_V01)
    judgment = ""
    score = None
    for new_judgment in texts:
        judgment += ("\n" + new_judgment)
        score, try_again = get_score_v01(judgment, pattern)
        if not try_again:
            break
    return score


def parse_v20(text: str) -> str | None:
    """Upstream: gen_judgment.py (v2.0, 196f6b8) get_score with config/arena-hard-v2.0.yaml's regex_patterns: the
    text upper-cased; the first pattern with any match gives its LAST match (even if matches disagree); no retry."""
    return get_score_v20(text, REGEX_PATTERNS_V20)


def system_prompt(version: str, category: str) -> str:
    """v0.1: config/judge_config.yaml system_prompt (one prompt, category ignored). v2.0: utils/judge_utils.py
    JUDGE_SETTINGS[category]["system_prompt"] (gen_judgment.pairwise_judgment looks up the question's `category`:
    hard_prompt, coding, math, arena-hard-v0.1 -> OG_ARENA_HARD_PROMPT; creative_writing -> its own)."""
    if version == "v0.1":
        return SYSTEM_PROMPT_V01
    if version == "v2.0":
        return JUDGE_SETTINGS[category]["system_prompt"]
    raise ValueError(version)


def user_prompt(version: str, category: str, question: str, answer_a: str, answer_b: str) -> str:
    """The judge's user turn, answer_a shown as Assistant A. Game 1: A = baseline, B = model; game 2 swapped.

    v0.1: gen_judgment.py judgment(): prompt_template[0].format(question_1=..., answer_1=..., answer_2=...).
    v2.0: gen_judgment.py pairwise_judgment(): prompt_template.format(QUESTION=..., ANSWER_A=..., ANSWER_B=...)
    (the same template for every category)."""
    if version == "v0.1":
        return PROMPT_TEMPLATE_V01[0].format(question_1=question, answer_1=answer_a, answer_2=answer_b)
    if version == "v2.0":
        return PROMPT_TEMPLATE_V20.format(QUESTION=question, ANSWER_A=answer_a, ANSWER_B=answer_b)
    raise ValueError(version)


def battles_v01(judgments: list[dict], baseline: str, weight: int = 3) -> pd.DataFrame:
    """Upstream: show_result.py (v0.1, 3071ef9) get_battles_from_judgment with first_game_only False and no style
    control, on `judgments` (rows {question_id, model, games: [{score}, {score}]}) in the given order instead of
    the concatenated judgment files. Columns question_id, model_a (= baseline), model_b, winner; a ">>" verdict is
    `weight` rows; a game with any other label (or None) gives no row."""
    judgments = pd.DataFrame(judgments)
    battles = judgments.apply(lambda row: get_battles_from_row(row, False, weight, baseline, None), axis=1)
    battles = pd.DataFrame(battles[battles.map(len) > 0].explode().tolist())
    return battles


def scores_v01(battles, baseline: str, num_rounds: int = 100) -> dict:
    """{model: (score, lower, upper)} as v0.1's leaderboard (--output csv: score, rating_q025, rating_q975), win
    rates against `baseline` in %, rounded to 2 decimals by get_win_rate_column (the console rounds again to 1).

    Upstream: show_result.py (v0.1, 3071ef9) __main__ without style control and without --show-elo:
    compute_mle_elo on all battles; np.random.seed(42) (utils_math sets it at import; nothing draws from it before
    the bootstrap); get_bootstrap_result; the stats table (score = the full-data rating, lower / upper = the 2.5 /
    97.5 percentiles of the bootstrap ratings) converted column by column with get_win_rate_column; the
    avg_tokens / results columns (answer files) and the printing are left out. The baseline is in the result (50.0).
    With a baseline other than "gpt-4-0314" the bootstrap is unanchored (see get_bootstrap_result): kept."""
    bt_model_coef = compute_mle_elo(battles, baseline_model=baseline)
    np.random.seed(42)
    bootstrap_model_coef = get_bootstrap_result(battles, compute_mle_elo, num_rounds, baseline)

    stats = pd.DataFrame()
    stats["results"] = None
    stats["results"] = stats['results'].astype('object')

    for i, model in enumerate(bt_model_coef.index):
        assert model in bootstrap_model_coef.columns

        stats.at[i, "model"] = model
        stats.at[i, "score"] = bt_model_coef[model]
        stats.at[i, "lower"] = np.percentile(bootstrap_model_coef[model], 2.5)
        stats.at[i, "upper"] = np.percentile(bootstrap_model_coef[model], 97.5)

    stats.sort_values(by="model", inplace=True)
    stats["score"] = get_win_rate_column(stats, "score", baseline).tolist()
    stats["lower"] = get_win_rate_column(stats, "lower", baseline).tolist()
    stats["upper"] = get_win_rate_column(stats, "upper", baseline).tolist()

    return {row["model"]: (row["score"], row["lower"], row["upper"]) for _, row in stats.iterrows()}


def scores_v20(judgments: list[dict], num_rounds: int = 100, seed: int | None = 0) -> dict:
    """{model: (score, lower, upper)} as v2.0's default leaderboard (no style control) for one category.

    Upstream: show_result.py (v2.0, 196f6b8) load_judgments (weight 3; a row is dropped whole when either game is
    null or has score None; an unknown label raises KeyError) and print_leaderboard: `num_rounds` bootstrap rounds
    of per-model resampling of the per-battle scores; score = "Scores (%)" (the mean of the bootstrap means x 100,
    rounded to 1 decimal, as printed); lower / upper = the 5% / 95% quantiles of the bootstrap means x 100,
    unrounded (upstream prints only round(score - lower, 1) and round(upper - score, 1), from unrounded values).
    The category's baseline (JUDGE_SETTINGS) is in the result as (50.0, 50.0, 50.0). Upstream seeds nothing; here
    np.random.seed(seed) first unless seed is None. judgments: rows {uid, model, category, games: [g1, g2]}, all of
    one category (upstream reports one category at a time)."""
    data = pd.DataFrame(judgments).reset_index(drop=True)
    battles = load_judgments(data)
    categories = battles.category.unique()
    assert len(categories) == 1, categories
    category = categories[0]
    battles = battles[battles.category == category].reset_index(drop=True)
    if seed is not None:
        np.random.seed(seed)
    leaderboard, _, lower_scores, upper_scores = print_leaderboard(battles, category, num_rounds=num_rounds)
    lower = dict(zip(lower_scores["model"], lower_scores["lower"] * 100, strict=True))
    upper = dict(zip(upper_scores["model"], upper_scores["upper"] * 100, strict=True))
    out = {}
    for _, row in leaderboard.iterrows():
        model = row["Model"]
        score = row["Scores (%)"]
        out[model] = (score, lower.get(model, score), upper.get(model, score))
    return out
