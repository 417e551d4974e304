"""AlpacaEval 2 as its authors compute it: the test reference for evaluation/alpaca_eval.py.

Ported from tatsu-lab/alpaca_eval at cd543a1 (scoring unchanged since release 0.6.6, f19c323), files under
src/alpaca_eval/. Upstream functions and classes are copied whole, verbatim; only the imports and the I/O are
adapted (no `datasets`, no `huggingface_hub`: df_gamed.csv is read from a path given by the caller, and the weights
are never saved). Each copied function's docstring names its upstream file and function. The functions the tests
call are the five public ones at the end, and `make_df_gamed` (a synthetic df_gamed.csv: the real one is a Hub
file, `tatsu-lab/alpaca_eval` dataset repo, that the tests cannot download).
"""

from __future__ import annotations

import abc
import copy
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from numbers import Number
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt
import pandas as pd
import sklearn
from patsy import build_design_matrices, dmatrix
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import make_scorer
from sklearn.model_selection import GroupKFold, StratifiedKFold

# the project's verbatim copy of evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "evaluation" / "upstream" / "alpaca_eval_clf.txt"
SWITCH_COLUMN = "is_switched_outputs"  # pairwise_evaluator.SinglePairwiseAnnotator: _switch_column
RANDOM_SEED_COLUMNS = ["instruction"]  # SinglePairwiseAnnotator: random_seed_column=("instruction",)


# ----------------------------------------------------------------------------------------------------------------
# utils.py
# ----------------------------------------------------------------------------------------------------------------


def random_seeded_choice(seed: Union[int, str, float], choices, **kwargs):
    """Random choice with a (potentially string) seed.

    Upstream: src/alpaca_eval/utils.py random_seeded_choice (verbatim)."""
    return random.Random(seed).choices(choices, k=1, **kwargs)[0]


def make_prompts(
    df: pd.DataFrame,
    template: str,
    batch_size: int = 1,
) -> tuple[list[str], pd.DataFrame]:
    r"""Helper function to make batch prompts for a single template.

    Upstream: src/alpaca_eval/utils.py make_prompts (verbatim, docstring shortened).
    """

    if df.empty:
        return [], df

    text_to_format = re.findall(r"{([^ \s]+?)}", template)
    n_occurrences = Counter(text_to_format)

    if not all([n == batch_size for n in n_occurrences.values()]):
        raise ValueError(f"All placeholders should be repeated batch_size={batch_size} times but {n_occurrences}.")

    if len(df) % batch_size > 0:
        raise ValueError(
            f"The number of rows should be dividable by the batch_size={batch_size} but got {len(df)}."
            "You should use PaddingForBatchesProcessor"
        )

    df_out = df.copy()
    prompts = []
    # ugly for loops, not trivial to vectorize because of the batching
    for i in range(0, len(df_out), batch_size):
        current_prompt = copy.deepcopy(template)
        for j in range(batch_size):
            for to_format in n_occurrences.keys():
                # replace only first occurrence (that's why we don't use .format)
                current_prompt = current_prompt.replace("{" + to_format + "}", str(df_out.iloc[i + j][to_format]), 1)
        prompts.append(current_prompt)

    return prompts, df_out


def convert_to_dataframe(data) -> pd.DataFrame:
    """Convert input that AlpacaEval accepts into a dataframe.

    Upstream: src/alpaca_eval/utils.py convert_to_dataframe (verbatim less the `datasets.Dataset` branch)."""
    if isinstance(data, pd.DataFrame):
        return data.copy()
    elif isinstance(data, list):
        return pd.DataFrame.from_records(data)
    else:
        # try
        return pd.DataFrame(data)


def validate_alpacaeval_preference(x: float, is_allow_nan: bool = True) -> bool:
    """Validate the preference annotation.

    Upstream: src/alpaca_eval/utils.py validate_alpacaeval_preference (verbatim)."""
    return (1 <= x <= 2) or (is_allow_nan and np.isnan(x))


def prompt_to_chatml(prompt: str, start_token: str = "<|im_start|>", end_token: str = "<|im_end|>"):
    r"""Convert a text prompt to ChatML formal

    Upstream: src/alpaca_eval/utils.py prompt_to_chatml (verbatim, doctest dropped).
    """
    prompt = prompt.strip()
    assert prompt.startswith(start_token)
    assert prompt.endswith(end_token)

    message = []
    for p in prompt.split("<|im_start|>")[1:]:
        newline_splitted = p.split("\n", 1)
        role = newline_splitted[0].strip()
        content = newline_splitted[1].split(end_token, 1)[0].strip()

        if role.startswith("system") and role != "system":
            # based on https://github.com/openai/openai-cookbook/blob/main/examples
            # /How_to_format_inputs_to_ChatGPT_models.ipynb
            # and https://github.com/openai/openai-python/blob/main/chatml.md it seems that system can specify a
            # dictionary of other args
            other_params = _string_to_dict(role.split("system", 1)[-1])
            role = "system"
        else:
            other_params = dict()

        message.append(dict(content=content, role=role, **other_params))

    return message


def _string_to_dict(to_convert):
    r"""Converts a string with equal signs to dictionary. E.g.
    >>> _string_to_dict(" name=user university=stanford")
    {'name': 'user', 'university': 'stanford'}

    Upstream: src/alpaca_eval/utils.py _string_to_dict (verbatim).
    """
    return {s.split("=", 1)[0]: s.split("=", 1)[1] for s in to_convert.split(" ") if len(s) > 0}


# ----------------------------------------------------------------------------------------------------------------
# completion_parsers.py
# ----------------------------------------------------------------------------------------------------------------


def logprob_parser(
    completion: dict,
    numerator_token: str,
    denominator_tokens: Sequence[str],
    is_binarize: bool = True,
    log_prob_index: Union[Literal["batch"], int] = "batch",
) -> list[float]:
    """Parser that computes the logprob of a numerator token divided by the sum of the logprobs of the denominator
    tokens.

    Upstream: src/alpaca_eval/completion_parsers.py logprob_parser (verbatim, including the nested
    single_logprob_parser; parameter docs shortened).
    """
    if completion == "":
        raise ValueError("The completion is empty.")

    # make sure completion["logprobs"]["content"][0]["top_logprobs"] exists
    assert "logprobs" in completion
    assert "content" in completion["logprobs"]

    def single_logprob_parser(top_logprobs: list[dict[str, Any]]) -> float:
        map_tokens_to_logprobs = {
            t["token"]: t["logprob"] for t in top_logprobs if t["token"] in denominator_tokens + [numerator_token]
        }

        # if it's not present we say it's probability is 0, which only makes sense if at least one is present
        missing = float("-inf")
        if len(map_tokens_to_logprobs) == 0:
            logging.warning(f"Cannot find any logprobs from {denominator_tokens + [numerator_token]} in {completion}.")
            return np.nan

        baseline_logprob = map_tokens_to_logprobs.get(numerator_token, missing)
        denominator_logprob = logsumexp([map_tokens_to_logprobs.get(t, missing) for t in denominator_tokens])

        if is_binarize:
            # in the binary case, we want to know whether the baseline token has a higher logprob than all the others
            denominator_not_numerator_tokens = [t for t in denominator_tokens if t != numerator_token]
            denominator_not_baseline_logprobs = [
                map_tokens_to_logprobs.get(t, missing) for t in denominator_not_numerator_tokens
            ]
            is_baseline_best = all([baseline_logprob > t for t in denominator_not_baseline_logprobs])
            out = 1 if is_baseline_best else 2

        else:
            out_logprob = baseline_logprob - denominator_logprob  # typecheck doesn't recognize it's a float
            probability = np.exp(out_logprob)
            # if you have probability 1 of preferring first then say 1 if 0 say 2
            # output between 1 and 2 for historical reasons
            out = 2 - probability

        return out

    if log_prob_index == "batch":
        batch_size = len(completion["logprobs"]["content"])
        assert batch_size > 0
        for i in range(batch_size):
            assert "top_logprobs" in completion["logprobs"]["content"][i]

        out = [single_logprob_parser(completion["logprobs"]["content"][i]["top_logprobs"]) for i in range(batch_size)]
    else:
        out = [single_logprob_parser(completion["logprobs"]["content"][log_prob_index]["top_logprobs"])]

    return out


# ----------------------------------------------------------------------------------------------------------------
# metrics/helpers.py
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BaseScoringRule(abc.ABC):
    """Base class for a scoring rule.

    Upstream: src/alpaca_eval/metrics/helpers.py BaseScoringRule (verbatim)."""

    @abc.abstractmethod
    def _score(self, prediction: pd.Series, target: pd.Series) -> float:
        pass

    @abc.abstractmethod
    def _bayes_estimator(self, predictions: pd.Series) -> Number:
        pass

    def _idcs_draws(self, predictions: pd.Series) -> pd.Series:
        return (predictions == 1.5) | (predictions == 0)

    def score(self, prediction: npt.ArrayLike, target: npt.ArrayLike) -> float:
        """Score a prediction. Higher is better."""
        prediction, target = self.preprocess(prediction, target)
        return self._score(prediction, target)

    def error(self, prediction: npt.ArrayLike, target: npt.ArrayLike) -> float:
        """Compute the error of the prediction. Lower is better"""
        return 1 - self.score(prediction, target)

    def sem(self, prediction: npt.ArrayLike, target: npt.ArrayLike) -> float:
        """Compute the standard error of the error."""
        return pd.Series([self.score([p], [t]) for p, t in zip(prediction, target)]).sem()

    def generalized_win_rate(self, predictions: npt.ArrayLike) -> float:
        """Compute the generalized win rate of the prediction."""
        return self.describe_head2head(predictions)["win_rate"]

    def describe_head2head(self, predictions: npt.ArrayLike) -> dict[str, float]:
        """Compute the generalized win rate of the prediction."""
        predictions = self.preprocess_predictions(predictions)
        n_draws = self._idcs_draws(predictions).sum()

        # makes it easier to work with
        predictions = predictions.astype(float).replace({0.0: 1.5})

        is_preference = predictions.apply(validate_alpacaeval_preference, is_allow_nan=False)
        n_not_pair = sum(~is_preference)
        if n_not_pair > 0:
            logging.info(f"drop {n_not_pair} outputs that are not preferences")

        predictions = predictions[is_preference] - 1

        n_wins = (predictions > 0.5).sum()
        n_wins_base = (predictions < 0.5).sum()
        n_total = len(predictions)

        return dict(
            win_rate=predictions.mean() * 100,
            standard_error=predictions.sem() * 100,
            n_wins=n_wins,
            n_wins_base=n_wins_base,
            n_draws=n_draws,
            # note that n_draws will happen more often for weighted win rate because you can get 1.5 somewhat often due
            # to float precision
            n_total=n_total,
        )

    def bayes_estimator(self, predictions: npt.ArrayLike) -> Number:
        """Compute the bayes estimator of the predictions."""
        predictions = self.preprocess_predictions(predictions)
        return self._bayes_estimator(predictions)

    def preprocess(self, predictions: npt.ArrayLike, targets: npt.ArrayLike) -> tuple[pd.Series, pd.Series]:
        """Validate the predictions and targets."""
        predictions = self.preprocess_predictions(predictions)
        targets = self.preprocess_targets(targets)

        if predictions.shape != targets.shape:
            raise ValueError(
                f"predictions and targets should have the same shape. Got {predictions.shape} and {targets.shape}"
            )

        return predictions, targets

    def preprocess_predictions(self, predictions: npt.ArrayLike) -> pd.Series:
        """Validate the predictions."""
        # backward compatibility for 0 -> 1.5
        return pd.Series(predictions).replace({0: 1.5}).astype(float)

    def preprocess_targets(self, targets: npt.ArrayLike) -> pd.Series:
        """Validate the targets."""
        # backward compatibility for 0 -> 1.5
        return pd.Series(targets).replace({0: 1.5}).astype(float)


class ZeroOneScoringRule(BaseScoringRule):
    """Scoring rule for binary predictions.

    Upstream: src/alpaca_eval/metrics/helpers.py ZeroOneScoringRule (verbatim)."""

    def _score(self, prediction, target):
        # accuracy
        return (target == prediction).mean()

    def _bayes_estimator(self, predictions):
        # mode
        return _random_mode(predictions)

    def generalized_win_rate(self, predictions):
        descriptions = self.describe_head2head(predictions)
        assert (
            descriptions["win_rate"]
            == (descriptions["n_wins"] + descriptions["n_draws"] / 2) / descriptions["n_total"] * 100
        ), "generalized_win_rate should be equal to the win_rate for binary predictions"
        return descriptions["win_rate"]

    def preprocess_predictions(self, predictions: npt.ArrayLike) -> pd.Series:
        return pd.Series(predictions).replace({1.5: 0}).round().astype(pd.Int64Dtype())

    def preprocess_targets(self, targets: npt.ArrayLike) -> pd.Series:
        return pd.Series(targets).replace({1.5: 0}).round().astype(pd.Int64Dtype())


class AbsoluteScoringRule(BaseScoringRule):
    """Absolute loss scoring rule (i.e. MAE).

    Upstream: src/alpaca_eval/metrics/helpers.py AbsoluteScoringRule (verbatim)."""

    def _score(self, prediction, target):
        # 1 - MAE
        return 1 - (target - prediction).abs().mean()

    def _bayes_estimator(self, predictions):
        # if all the values are 0.0, 1.0, 2.0, nan, or 1.5 then for backward compatibility we return the random mode
        # note that this doesn't change the expected value of the estimator, but increases the variance. The new version
        # is thus better
        if pd.Series(predictions.unique()).isin([0.0, 1.0, 2.0, np.nan, 1.5]).all():
            return _random_mode(predictions)

        return predictions.median()


def _random_mode(s, available_modes=None, favorite_mode=None, seed=123, is_dropna=True):
    """Take the mode of a series, but if there are multiple modes, randomly sample one
    (with potential restriction to `available_modes` or favoring a specific mode `favorite_mode`).

    Upstream: src/alpaca_eval/metrics/helpers.py _random_mode (verbatim, doctest dropped).
    """
    out = pd.Series.mode(s)
    if is_dropna:
        out = out.dropna()

    if len(out) > 1:
        if favorite_mode is not None and favorite_mode in out.values:
            return favorite_mode
        if available_modes is not None:
            out = out[out.isin(available_modes)]
        out = out.sample(1, random_state=seed)

    if len(out) == 0:
        return np.nan

    return out.item()


# ----------------------------------------------------------------------------------------------------------------
# metrics/winrate.py
# ----------------------------------------------------------------------------------------------------------------


def _upstream_get_winrate(annotations: Union[pd.DataFrame, Sequence]) -> dict[str, float]:
    """Extract head2head metrics (n_wins, n_counts, win_rate) from a sequence preference.
    This assumes that the preference is encoded as 0 or 1.5 for draw, 1 for base win, 2 when the model to compare wins.

    Upstream: src/alpaca_eval/metrics/winrate.py get_winrate (verbatim).
    """
    annotations = convert_to_dataframe(annotations)
    preferences = annotations["preference"]
    out = AbsoluteScoringRule().describe_head2head(preferences)
    out["discrete_win_rate"] = ZeroOneScoringRule().describe_head2head(preferences)["win_rate"]
    return out


def pairwise_to_winrate(preferences: Union[pd.DataFrame, Sequence]) -> dict[str, float]:
    """Extract head2head metrics (n_wins, n_counts, win_rate) from a sequence preference.
    This assumes that the preference is encoded as 0 or 1.5 for draw, 1 for base win, 2 when the model to compare wins.

    Upstream: src/alpaca_eval/metrics/winrate.py pairwise_to_winrate (verbatim; backward compatibility).
    """
    return _upstream_get_winrate(annotations=[dict(preference=p) for p in preferences])


# ----------------------------------------------------------------------------------------------------------------
# metrics/glm_winrate.py
# ----------------------------------------------------------------------------------------------------------------

GLM_INFO = {
    "length_controlled_v1": {
        "formula": "np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1",
        "regularize_to_baseline_lambda": 0.2,
        "kwargs": {"n_splits": 5},
    },
    "length_controlled_noreg": {
        "formula": "np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1",
        "regularize_to_baseline_lambda": None,
        "kwargs": {"n_splits": 5},
    },
    "length_controlled_minimal": {
        "formula": "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1",
        "regularize_to_baseline_lambda": None,
        "kwargs": {"n_splits": 5},
    },
}


def _upstream_get_length_controlled_winrate(
    annotations: Union[pd.DataFrame, Sequence[dict]],
    glm_name="length_controlled_v1",
    save_weights_dir: Optional[Union[str, Path]] = "auto",
    baseline: Optional[str] = None,
    is_add_glm_preference_inplace: bool = True,
    is_warn_extreme_changes: bool = True,
    glm_info=None,
    *,
    df_gamed_path: Union[str, Path],
) -> dict[str, float]:
    """Extract head2head metrics (n_wins, n_counts, win_rate) from a sequence preference, and also predict the length
    controlled winrate using a GLM.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py get_length_controlled_winrate (verbatim, parameter docs
    dropped). Adapted: `df_gamed_path` is passed on to _get_featurized_data (upstream downloads df_gamed.csv from
    the Hub); the `baseline` branch (predict_winrate, which needs the Hub's instruction_difficulty.csv) raises.
    """
    glm_info = glm_info or GLM_INFO[glm_name]

    metrics = _upstream_get_winrate(annotations)  # get the non-length controlled winrate
    df = convert_to_dataframe(annotations)

    if save_weights_dir == "auto":
        assert len(df["annotator"].unique()) == 1
        save_weights_dir = Path(__file__).parent / "weights" / df["annotator"].unique()[0]

    assert len(df["generator_2"].unique()) == 1
    model_name = list(df["generator_2"].unique())[0]
    baseline_name = list(df["generator_1"].unique())[0]
    is_baseline = model_name == baseline_name

    if not is_baseline:
        df_XY_train, df_X_test, sample_weight = _get_featurized_data(
            df,
            formula=glm_info["formula"],
            regularize_to_baseline_lambda=glm_info["regularize_to_baseline_lambda"],
            df_gamed_path=df_gamed_path,
        )
        filter_df = df_XY_train["preference"].notna()
        df_XY_train = df_XY_train[filter_df]
        if sample_weight is not None:
            sample_weight = sample_weight[filter_df]

        model = fit_LogisticRegressionCV(
            df_XY_train, "preference", is_ytrue_proba=True, sample_weight=sample_weight, **glm_info["kwargs"]
        )
        predicted_preferences = model.predict_proba(df_X_test)[:, 1]
        weights = dict(zip(df_X_test.columns, model.coef_[0]))
    else:
        weights = {c.strip(): 0 for c in glm_info["formula"].split("-")[0].split("+")}
        predicted_preferences = (df["preference"] * 0) + 0.5  # by construction

    if is_add_glm_preference_inplace and isinstance(annotations, pd.DataFrame):
        annotations["glm_preference"] = predicted_preferences

    metrics["length_controlled_winrate"] = predicted_preferences.mean() * 100
    metrics["lc_standard_error"] = pd.Series(predicted_preferences).sem() * 100

    if save_weights_dir is not None:
        save_weights_dir = Path(save_weights_dir) / glm_name
        save_weights_dir.mkdir(exist_ok=True, parents=True)
        weights_path = save_weights_dir / f"baseline_{baseline_name}.csv"
        if weights_path.exists():
            saved_weights = pd.read_csv(weights_path, index_col=0)
            new_weights = pd.DataFrame(weights, index=[model_name])
            saved_weights = pd.concat([saved_weights, new_weights], axis=0)
        else:
            saved_weights = pd.DataFrame(weights, index=[model_name])
        saved_weights = saved_weights[~saved_weights.index.duplicated(keep="last")]
        saved_weights.to_csv(weights_path, float_format="%.16f")

    if baseline is not None:
        # upstream: metrics["length_controlled_winrate"] = predict_winrate(model=model_name, baseline=baseline,
        #     weights=weights_path, glm_name=glm_name)
        raise NotImplementedError("predict_winrate needs the Hub's instruction_difficulty.csv; not ported")

    if is_warn_extreme_changes and get_is_extreme_changes(metrics["win_rate"], metrics["length_controlled_winrate"]):
        logging.warning(
            f"Length controlled win rate is very different from the raw one: {metrics['length_controlled_winrate']:.1f}"
            f"% vs {metrics['win_rate']:.1f}%. This might be a sign of failure of the GLM."
        )

    return metrics


def get_is_extreme_changes(prev_winrate, new_winrate, abs_diff=10, rel_diff=4, min_warn=True, max_warn=True):
    """Whether the win-rate changed by more than abs_diff or rel_diff.  E.g. if  abs_diff=7, rel_diff=4 and old win
    rate is 20, this will return true if the new win rate is <10 (i.e. min(20-20/4, 20-10)) or > 40 (i.e. 20+(100-20)/2)
    Or if the old win rate is 50 and we predict <37.5 or >62.5.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py get_is_extreme_changes (verbatim).
    """
    too_small = new_winrate < min(prev_winrate - (prev_winrate / rel_diff), prev_winrate - abs_diff)
    too_large = new_winrate > max(prev_winrate + ((100 - prev_winrate) / rel_diff), prev_winrate + abs_diff)
    return (too_small and min_warn) or (too_large and max_warn)


def _logistic(x):
    """Logistic function.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py _logistic (verbatim)."""
    return np.exp(-np.logaddexp(0, -x))


def _get_featurized_data(
    df_annotations: pd.DataFrame,
    formula: str,
    regularize_to_baseline_lambda: Optional[float],
    df_gamed_path: Union[str, Path],
) -> tuple[pd.DataFrame, pd.DataFrame, Optional[pd.Series]]:
    """Featurizes annotations using R-style formula and returns the design matrix for the train and test set.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py _get_featurized_data (verbatim, parameter docs dropped).
    Adapted: df_gamed.csv is read from `df_gamed_path` instead of hf_hub_download(repo_id="tatsu-lab/alpaca_eval",
    filename="df_gamed.csv", repo_type="dataset", ...).
    """
    # 1. get precomputed data: instruction_difficulty and annotations of gamed models
    out = df_gamed_path
    df_gamed = pd.read_csv(out).drop(columns=["model"])
    instruction_difficulty = df_gamed.drop_duplicates("index")["instruction_difficulty"]

    # 2. add features necessary for the glm
    df = df_annotations.reset_index()
    len_1 = df["output_1"].str.len()
    len_2 = df["output_2"].str.len()
    std_delta_len = len_1 - len_2
    df = df[["preference", "index"]].copy()
    df["std_delta_len"] = std_delta_len / std_delta_len.std()
    df["preference"] = df["preference"].astype(float).replace({0.0: 1.5}) - 1  # easier to work with in [0,1]
    df["instruction_difficulty"] = df["index"].transform(lambda g: instruction_difficulty[g])
    df["not_gamed_baseline"] = True

    # 3. make the design matrix for the model you would like to predict for, i.e., if there was no length difference
    df_test = df[["instruction_difficulty", "not_gamed_baseline"]].copy()
    df_test["std_delta_len"] = 0

    if regularize_to_baseline_lambda:
        df_gamed_and_m = pd.concat([df_gamed, df], axis=0)
        df_XY_train, df_X_test = make_dmatrix_for_model(df_gamed_and_m, df_test, formula=formula)

        # divided by 2 because there are two gamed baselines.
        sample_weight = (df_gamed_and_m["not_gamed_baseline"]).astype(float) + (
            regularize_to_baseline_lambda * (~df_gamed_and_m["not_gamed_baseline"])
        ).astype(float) / 2
    else:
        sample_weight = None
        df_XY_train, df_X_test = make_dmatrix_for_model(df, df_test, formula=formula)

    return df_XY_train, df_X_test, sample_weight


def make_dmatrix_for_model(
    df_train: pd.DataFrame, df_test: pd.DataFrame, formula: str, col_y_true="preference"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the design matrix based on a patsy formula.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py make_dmatrix_for_model (verbatim, parameter docs dropped).
    """
    df_XY_train = dmatrix(formula, df_train, return_type="dataframe")
    df_X_test = build_design_matrices([df_XY_train.design_info], df_test, return_type="dataframe")[0]
    df_XY_train[col_y_true] = df_train[col_y_true]  # adds the label
    return df_XY_train, df_X_test


def logloss(y_true, y_pred, sample_weight=None):
    """Compute the logloss of the predictions, potentially weighted.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py logloss (verbatim)."""
    epsilon = 1e-15
    y_pred = np.clip(y_pred, epsilon, 1 - epsilon)
    all_logloss = y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred)
    if sample_weight is not None:
        # weight as desired
        all_logloss = all_logloss * sample_weight
    return -np.mean(all_logloss)


def logloss_continuous(y_true, y_pred, true_prob, true_sample_weight=None):
    """Computes the log loss with continuous targets for sklearn. Need to hack it as sklearn expects int targets.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py logloss_continuous (verbatim)."""
    # y_true is binary and sample_weight says the proba for that class. Let's revert that transform
    y_true = np.where(y_true == 1, true_prob, 1 - true_prob)
    return logloss(y_true, y_pred, sample_weight=true_sample_weight)


def fit_LogisticRegressionCV(data, col_y_true, is_ytrue_proba=True, n_splits=5, C=100, sample_weight=None, **kwargs):
    """Fits LogisticRegressionCV with optionally y_true being probabilities rather than the labels.

    Upstream: src/alpaca_eval/metrics/glm_winrate.py fit_LogisticRegressionCV (verbatim; the discrete branch, not
    used by length_controlled_v1, is kept as is: it passes `scorer=` and `needs_proba=`, which sklearn rejects)."""
    sklearn.set_config(enable_metadata_routing=True)
    dflt_kwargs = dict(random_state=123, dual=False, penalty="l1", solver="liblinear", n_jobs=None, fit_intercept=False)
    dflt_kwargs.update(kwargs)
    if not is_ytrue_proba:
        if n_splits > 0:
            cv = StratifiedKFold(n_splits=n_splits)
            scorer = make_scorer(sk_log_loss, greater_is_better=False, needs_proba=True)
            if sample_weight is None:
                model = LogisticRegressionCV(cv=cv, scorer=scorer, **dflt_kwargs)
            else:
                scorer = scorer.set_score_request(sample_weight=True)
                model = LogisticRegressionCV(cv=cv, scorer=scorer, **dflt_kwargs)

        else:
            model = LogisticRegression(C=C, **dflt_kwargs)

        model.fit(data.drop(columns=[col_y_true]), (data[col_y_true]).round().astype(int), sample_weight=sample_weight)

    else:  # use log loss without assuming that labels are discrete
        # duplicate the df, once with label 0 and once with label 1
        data = data.reset_index(drop=True).reset_index(drop=False, names=["group"])
        data_1 = data.copy()
        data_1["y"] = 1
        data_0 = data.copy()
        data_0[col_y_true] = 1 - data_0[col_y_true]
        data_0["y"] = 0
        data_dup = pd.concat([data_1, data_0], axis=0).reset_index(drop=True)
        true_prob = data_dup[col_y_true]

        if sample_weight is None:
            true_sample_weight = None
            sample_weight = true_prob
        else:
            true_sample_weight = np.concatenate([sample_weight, sample_weight], axis=0)  # actual sample weight
            # multiply the true probabilities by the actual sample_weight you want
            sample_weight = true_prob * true_sample_weight

        if n_splits > 0:
            cv = GroupKFold(n_splits=n_splits)
            scorer = make_scorer(
                logloss_continuous, response_method="predict_proba", greater_is_better=False
            ).set_score_request(true_sample_weight=True, true_prob=True)
            model = LogisticRegressionCV(cv=cv, scoring=scorer, **dflt_kwargs)
            fit_kwargs = dict(groups=data_dup["group"], true_sample_weight=true_sample_weight, true_prob=true_prob)
        else:
            model = LogisticRegression(C=C, **dflt_kwargs)
            fit_kwargs = dict()

        model.set_fit_request(sample_weight=True)
        model.fit(
            X=data_dup.drop(columns=[col_y_true, "y", "group"]),
            y=data_dup["y"],
            sample_weight=sample_weight,
            **fit_kwargs,
        )
    return model


# ----------------------------------------------------------------------------------------------------------------
# What the tests call
# ----------------------------------------------------------------------------------------------------------------


def fill_prompt(instruction: str, output_1: str, output_2: str) -> list[dict]:
    """The chat messages annotator weighted_alpaca_eval_gpt4_turbo sends for one pair, as shown to the judge (i.e.
    after any swap: output_1 is the "m" output, output_2 the "M" one).

    Upstream: annotators/base.py SingleAnnotator._make_prompts -> utils.make_prompts (batch_size 1: each placeholder,
    in order of first appearance in the template — instruction, output_1, output_2 — has its FIRST occurrence
    replaced by str(value)), then decoders/openai.py openai_completions -> utils.prompt_to_chatml (gpt-4-1106-preview
    requires ChatML). The template is read from evaluation/upstream/alpaca_eval_clf.txt."""
    template = TEMPLATE_PATH.read_text(encoding="utf-8")
    df = pd.DataFrame([dict(instruction=instruction, output_1=output_1, output_2=output_2)])
    prompts, _ = make_prompts(df, template=template, batch_size=1)
    return prompt_to_chatml(prompts[0])


def is_switched(instruction: str, seed: int = 0) -> bool:
    """Whether upstream swaps output_1 and output_2 for this instruction before prompting (then preference := 3 - p).

    Upstream: processors.py RandomSwitchTwoColumnsProcessor.preprocess, with the arguments
    annotators/pairwise_evaluator.py SinglePairwiseAnnotator gives it (_switch_column "is_switched_outputs",
    random_seed_columns ["instruction"]) and seed = PairwiseAnnotator's seed (0, passed on by
    annotators/base.py BaseAnnotator._initialize_annotators); utils.random_seeded_choice."""
    x = pd.Series({"instruction": instruction})
    return random_seeded_choice(
        seed=SWITCH_COLUMN + "".join(x[sorted(list(RANDOM_SEED_COLUMNS))]) + str(seed),
        choices=[False, True],
    )


def logprob_preference(top_logprobs: list[dict]) -> float:
    """The preference (in [1, 2]; 1 = output_1 "m" better) from the first token's top_logprobs; NaN when neither "m"
    nor "M" is among them.

    Upstream: completion_parsers.py logprob_parser with weighted_alpaca_eval_gpt4_turbo/configs.yaml's
    completion_parser_kwargs (numerator_token "m", denominator_tokens ["m", "M"], is_binarize False), applied to
    an OpenAI choice whose logprobs hold one content position."""
    completion = {"logprobs": {"content": [{"top_logprobs": top_logprobs}]}}
    return logprob_parser(completion, numerator_token="m", denominator_tokens=["m", "M"], is_binarize=False)[0]


def get_winrate(annotations: list[dict]) -> dict:
    """Upstream: metrics/winrate.py get_winrate (metrics/helpers.py AbsoluteScoringRule / ZeroOneScoringRule
    describe_head2head). `annotations` need only a "preference" (1 = baseline wins, 2 = model wins, 1.5 or 0 draw,
    None/NaN dropped)."""
    return _upstream_get_winrate(annotations)


def get_length_controlled_winrate(annotations: list[dict], df_gamed_path: str) -> dict:
    """Upstream: metrics/glm_winrate.py get_length_controlled_winrate(annotations, glm_name="length_controlled_v1",
    save_weights_dir=None, baseline=None), df_gamed.csv read from `df_gamed_path`.

    Each annotation: instruction, output_1 (the reference / baseline), output_2 (the model), generator_1,
    generator_2 (one value each), preference (1..2, None/NaN for unparsed), and `index`: the instruction's 0-based
    position in the official 805-row eval-set order. Upstream never carries an `index` field: its annotations come
    from annotate_head2head in eval-set order, so `df.reset_index()["index"]` (_get_featurized_data) is the row
    position, which it uses to look up instruction_difficulty. Here the frame is built with `index` as its row
    labels, so reset_index() yields exactly that column: for the full 805 rows in order it is upstream's own frame;
    for a subset or a shuffled list, each row keeps the difficulty of its own instruction (upstream, given such a
    list, would use the row position). Every `index` must be a row of df_gamed's first model.

    scikit-learn's global config is restored afterwards (upstream leaves enable_metadata_routing=True set)."""
    df = pd.DataFrame.from_records(annotations)
    df = df.set_index("index")  # index name "index" -> reset_index() makes the column "index"
    with sklearn.config_context():
        return _upstream_get_length_controlled_winrate(
            df, glm_name="length_controlled_v1", save_weights_dir=None, baseline=None, df_gamed_path=df_gamed_path
        )


def make_df_gamed(path, n_instructions: int, seed: int) -> None:
    """Write a SYNTHETIC df_gamed.csv (the real one is tatsu-lab/alpaca_eval's Hub dataset file): columns model,
    index, preference, std_delta_len, instruction_difficulty, not_gamed_baseline; two gamed models
    ("gpt4_gamed_verbose", "gpt4_gamed_concise") x n_instructions rows each, not_gamed_baseline False.

    Within the first model the rows are index 0..n-1 in order, so the row label that
    `df_gamed.drop_duplicates("index")["instruction_difficulty"]` keeps for index i is i (upstream looks the
    difficulty up by that label). instruction_difficulty ~ N(0, 1) per index; std_delta_len (baseline minus model
    length, standardised) is negative for the verbose model and positive for the concise one; preference (already in
    [0, 1], 1 = the gamed model wins) = logistic(-1.5 tanh(std_delta_len) - 0.8 difficulty - 0.3 + noise)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.0, n_instructions)
    rows = []
    for model, mean_delta in (("gpt4_gamed_verbose", -1.0), ("gpt4_gamed_concise", 1.0)):
        std_delta_len = rng.normal(mean_delta, 0.5, n_instructions)
        logit = -1.5 * np.tanh(std_delta_len) - 0.8 * difficulty - 0.3 + rng.normal(0.0, 0.5, n_instructions)
        preference = _logistic(logit)
        for i in range(n_instructions):
            rows.append(
                dict(
                    model=model,
                    index=i,
                    preference=float(preference[i]),
                    std_delta_len=float(std_delta_len[i]),
                    instruction_difficulty=float(difficulty[i]),
                    not_gamed_baseline=False,
                )
            )
    pd.DataFrame(rows).to_csv(path, index=False)
