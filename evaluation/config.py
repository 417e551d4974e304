"""Typed validation recipe (configs/validation/*.yaml): which eval sets, which methods, which metrics.

`EvalSpec` is what the pipeline config's `validation:` section holds (the pipeline supplies the bases);
`ValidationConfig` adds the bases and an output directory for `pilot validate` on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pilot_core.config import BaseConfig
from pilot_core.hub_data import HubData
from pilot_core.judge_spec import JudgeSpec
from pilot_core.models.calls import ClientConfig
from pilot_core.models.source import ModelSource
from pilot_core.names import check_unique, config_name
from wsd_inference.config import WSDConfig
from wsd_inference.methods import METHODS

ALIGNMENT_KINDS = ("alignment", "harmful")
CAPABILITY_KINDS = ("math", "choice", "short_answer", "code")
# a benchmark in its upstream columns (evaluation/benchmarks.py) -> the kind it is measured as
FORMAT_KINDS = {"gsm8k": "math", "mmlu": "choice", "humaneval": "code", "alpaca_eval": "alignment",
                "arena_hard": "alignment", "advbench": "harmful", "harmbench": "harmful"}


class EvalSet(BaseConfig):
    """A versioned JSONL file of {id, prompt | messages, ...}. Capability items carry `answer` (math: a number;
    choice: a letter, with `choices`; short_answer: a string or list of accepted strings). Or a benchmark in its
    upstream columns (`format`), from a local file (`path`: JSONL or Parquet) or read like the hub (`hub`)."""

    name: str
    version: str = Field(description="bumped whenever the file changes; reports record it with the file's sha256")
    path: str | None = Field(None, description="the JSONL file (or, with format, a JSONL or Parquet file)")
    hub: HubData | None = Field(None, description="with format: read with datasets.load_dataset (a hub id pinned by "
                                "revision, a local directory laid out like one, or a builder with data_files)")
    format: Literal["gsm8k", "mmlu", "humaneval", "alpaca_eval", "arena_hard", "advbench",
                    "harmbench"] | None = Field(None, description=(
                        "upstream columns: gsm8k (question, answer with '#### N'), mmlu (question, choices, answer "
                        "index, subject), humaneval (task_id, prompt, test, entry_point: pass@1 in a sandbox), "
                        "alpaca_eval (instruction, output: win rate against the reference output), arena_hard "
                        "(question_id, turns: win rate against baseline_path's answers), advbench (goal) and "
                        "harmbench (BehaviorID, Behavior, ContextString): harmful sets"))
    baseline_path: str | None = Field(None, description="arena_hard: the baseline model's answers (Arena-Hard-Auto's "
                                      "model_answer JSONL; v0.1: question_id, choices[0].turns[0].content; v2.0: "
                                      "uid, messages[-1].content.answer)")
    reference_generator: str | None = Field(None, description="alpaca_eval: the `generator` every reference row must "
                                            "name (AlpacaEval 2: gpt4_1106_preview; AlpacaEval 1's text_davinci_003 "
                                            "outputs are refused then)")
    categories: list[str] | None = Field(None, description="only the rows of these categories (Arena-Hard v2.0 "
                                         "scores hard_prompt and creative_writing apart, each against its own "
                                         "baseline: one eval set per category)")
    kind: Literal["alignment", "harmful", "math", "choice", "short_answer", "code"] | None = Field(
        None, description="what is measured (a format implies it)")
    few_shot: int = Field(0, ge=0, description="capability sets: worked examples put before each question")
    few_shot_path: str | None = Field(None, description="JSONL of {prompt, response} examples (needed if few_shot)")
    max_new_tokens: int | None = Field(None, ge=1, description="budget for this set (default: wsd.max_new_tokens)")
    limit: int | None = Field(None, ge=1, description="use only the first N items (smoke runs)")

    _name = field_validator("name")(config_name("eval set name"))
    _version = field_validator("version")(config_name("eval set version"))

    @model_validator(mode="before")
    @classmethod
    def _kind_of_format(cls, data):
        """A format implies the kind it is measured as."""
        if isinstance(data, dict) and data.get("format") in FORMAT_KINDS:
            implied = FORMAT_KINDS[data["format"]]
            if data.get("kind") not in (None, implied):
                raise ValueError(f"eval set {data.get('name')}: format {data['format']} is measured as kind "
                                 f"{implied}, not {data['kind']}")
            data = {**data, "kind": implied}
        return data

    @model_validator(mode="after")
    def _shots(self) -> "EvalSet":
        if self.format:
            if (self.path is None) == (self.hub is None):
                raise ValueError(f"eval set {self.name}: give path (a local file) or hub, not both")
            if (self.format == "arena_hard") != (self.baseline_path is not None):
                raise ValueError(f"eval set {self.name}: baseline_path is for format arena_hard, which needs it")
            if self.reference_generator and self.format != "alpaca_eval":
                raise ValueError(f"eval set {self.name}: reference_generator is for format alpaca_eval")
        else:
            if self.kind is None or self.path is None or self.hub is not None or self.baseline_path or \
                    self.reference_generator:
                raise ValueError(f"eval set {self.name}: give kind and path (a project JSONL file), or a format")
        if self.few_shot and not self.few_shot_path:
            raise ValueError(f"eval set {self.name}: few_shot {self.few_shot} needs few_shot_path")
        if self.few_shot and self.kind not in CAPABILITY_KINDS:
            raise ValueError(f"eval set {self.name}: few_shot applies to capability sets "
                             f"({', '.join(CAPABILITY_KINDS)})")
        return self


class RewardMetric(BaseConfig):
    """Mean reward-model score of each method's responses on the alignment and harmful sets."""

    model: ModelSource = Field(description="a one-output sequence-classification model (local path or tiny)")
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _local(self) -> "RewardMetric":
        if self.model.url:
            raise ValueError("the reward model runs locally: give model.path or model.tiny")
        return self


class JudgeMetric(JudgeSpec):
    """Pairwise win rate of each method against base-only (both orders, ties count half), and against a set's
    reference answers where it has them (`ref_win_rate`: our rubric judge; AlpacaEval's and Arena-Hard's own
    figures are the `alpaca_eval` and `arena_hard` metrics).

    kind llm: an OpenAI-compatible judge (or a local chat model) with the versioned rubrics. kind reward_model:
    the response with the higher reward wins (|difference| <= tie_margin is a tie). kind rules: the demo's
    refusal rule per category (`pilot_core.judging.rule_score`: a refusal wins on a harmful prompt, an answer
    wins elsewhere). The last two are documented stand-ins for an LLM judge where none is available (offline)."""

    kind: Literal["llm", "reward_model", "rules"] = "llm"
    tie_margin: float = Field(0.0, ge=0.0, description="reward_model: differences up to this are ties")
    client: ClientConfig = ClientConfig()

    @model_validator(mode="after")
    def _model(self) -> "JudgeMetric":
        if self.kind != "rules" and self.model is None:
            raise ValueError(f"win_rate kind {self.kind} needs model")
        return self


class AlpacaEvalMetric(BaseConfig):
    """AlpacaEval 2 on the sets of format alpaca_eval, as AlpacaEval computes it (evaluation/alpaca_eval.py): the
    annotator weighted_alpaca_eval_gpt4_turbo (its prompt; the first token's log-probabilities of "m" and "M"),
    `alpaca_eval_win_rate` and, with `glm_data`, the length-controlled `alpaca_eval_lc_win_rate` (AlpacaEval's
    GLM; needs the `alpaca_eval` extra)."""

    name: str = "alpaca_eval"
    model: ModelSource = Field(description="the annotator: AlpacaEval 2's is gpt-4-1106-preview; any chat model "
                               "whose server returns top_logprobs (OpenAI, vLLM) or a local one")
    glm_data: HubData | None = Field(None, description="AlpacaEval's df_gamed.csv (tatsu-lab/alpaca_eval on the hub: "
                                     "the instructions' difficulties and the gamed baselines the GLM is fitted "
                                     "with), e.g. {path: csv, data_files: hf://datasets/tatsu-lab/alpaca_eval@REV/"
                                     "df_gamed.csv, split: train}; without it no LC figure")
    client: ClientConfig = ClientConfig()

    _name = field_validator("name")(config_name("judge name"))


class ArenaHardMetric(BaseConfig):
    """Arena-Hard-Auto on the sets of format arena_hard, as it judges and scores (evaluation/arena_hard.py): its
    judge prompt per category, both games, five labels; `arena_hard_score` (v0.1: Bradley-Terry with a bootstrap
    95% interval; v2.0: the bootstrap mean with its 90% interval), the version read from the questions' category
    (v0.1's questions are all `arena-hard-v0.1`)."""

    name: str = "arena_hard"
    model: ModelSource = Field(description="the judge: v0.1's is gpt-4-1106-preview, v2.0's gpt-4.1")
    max_tokens: int | None = Field(None, ge=16, description="the judgment's budget (default: upstream's, 4096 for "
                                   "v0.1, 16000 for v2.0)")
    weight: int = Field(3, ge=1, description="battles a significant verdict (A>>B) counts for (upstream: 3)")
    rounds: int = Field(100, ge=10, description="bootstrap rounds (upstream: 100)")
    client: ClientConfig = ClientConfig()

    _name = field_validator("name")(config_name("judge name"))


class HarmlessnessMetric(JudgeSpec):
    """Share of responses to the harmful set judged safe (a refusal or a safe completion).

    kind llm: the judge answers {"safe": true|false} by pilot_core/rubrics/harmlessness.<version>.txt.
    kind guard: a safety classifier served behind an OpenAI-compatible API (Llama Guard 3, Qwen3Guard-Gen on
    vLLM) moderates the response; its categories are kept per item.
    kind refusal_rules: safe only if the response opens with a refusal phrase (a strict, transparent stand-in
    for the demo; it counts a safe completion that does not refuse as unsafe)."""

    kind: Literal["llm", "guard", "refusal_rules"] = "llm"
    model: ModelSource | None = Field(None, description="the judge (kind llm) or the safety classifier (kind guard)")
    guard_format: Literal["llama_guard_3", "qwen3guard"] | None = Field(
        None, description="kind guard: the classifier's documented output (Llama Guard 3: safe / unsafe + S1-S14; "
        "Qwen3Guard-Gen: Safety / Categories / Refusal lines); it reads the prompt and the response as a chat")
    controversial_is_safe: bool = Field(False, description="qwen3guard: count its Controversial verdict as safe")
    client: ClientConfig = ClientConfig()

    @model_validator(mode="after")
    def _judge(self) -> "HarmlessnessMetric":
        if self.kind in ("llm", "guard") and self.model is None:
            raise ValueError(f"harmlessness kind {self.kind} needs model: the judge")
        if (self.kind == "guard") != (self.guard_format is not None):
            raise ValueError("guard_format is for harmlessness kind guard, which needs it (llama_guard_3, "
                             "qwen3guard)")
        return self


class MetricsConfig(BaseConfig):
    reward: RewardMetric | None = None
    win_rate: JudgeMetric | None = None
    harmlessness: HarmlessnessMetric | None = None
    alpaca_eval: AlpacaEvalMetric | None = None
    arena_hard: ArenaHardMetric | None = None
    bootstrap_samples: int = Field(1000, ge=100, description="resamples for the confidence intervals")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)


class HarnessTask(BaseConfig):
    """One lm-evaluation-harness task and the figure read from it (per item, so intervals and the tax are paired)."""

    name: str = Field(description="the task's name: lm-eval's own, or one in include_path")
    metric: str = Field("exact_match", description="the per-item metric lm-eval logs for the task")
    filter: str = Field("flexible-extract", description="the task's filter whose answers are scored")

    _name = field_validator("name")(config_name("harness task name"))


class HarnessConfig(BaseConfig):
    """Capability tasks run through lm-evaluation-harness (its `local-chat-completions` model) against the WSD
    server (`pilot wsd serve`) and the base alone served the same way (`--method base_only`), with every base.
    The task's accuracy joins the report as a capability set: per method, and as alignment tax."""

    tasks: list[HarnessTask] = Field(min_length=1)
    include_path: str | None = Field(None, description="a directory of lm-eval task YAMLs (e.g. reading local "
                                     "datasets, so the run is offline)")
    lm_eval: str = Field("lm_eval", description="the lm_eval command: install lm-eval[api] where it does not touch "
                         "this environment (its own virtual environment) and give its path")
    num_concurrent: int = Field(8, ge=1, description="requests lm-eval keeps in flight (the server batches them)")
    limit: int | None = Field(None, ge=1, description="items per task (smoke runs)")
    timeout_s: float = Field(7200.0, gt=0, description="seconds one lm-eval run may take")
    parallel: bool = Field(False, description="run WSD's and base-only's servers (and every base's) at once: right "
                           "for served bases; with in-process models each server loads its own copy")

    @model_validator(mode="after")
    def _unique(self) -> "HarnessConfig":
        check_unique([t.name for t in self.tasks], "harness task")
        return self


class SwitchSweep(BaseConfig):
    """WSD's switch setting chosen per base on a calibration split (what the release ships as wsd.json): WSD runs
    on `eval_sets` at every (rule, window, threshold) of the grid beside base-only; per base the most aligned
    setting (the mean of the win rate against base-only and the harmlessness rate on the calibration's alignment
    and harmful sets) whose alignment tax (the largest on its capability sets) is within `max_tax` wins; ties go
    to the earlier switch (fewer pilot tokens: cheaper), then the lower threshold. The gated eval sets are then
    measured at that setting."""

    eval_sets: list[EvalSet] = Field(min_length=2, description="the calibration split: at least one alignment or "
                                     "harmful set and one capability set, none of them a gated eval set's file")
    thresholds: list[float] = Field(min_length=1, description="the gammas tried")
    windows: list[int] | None = Field(None, description="the windows tried (default: wsd.window)")
    rules: list[Literal["absolute", "relative"]] | None = Field(None, description="the switch rules tried "
                                                                 "(default: wsd.rule)")
    max_tax: float = Field(0.02, ge=0.0, le=1.0, description="the alignment-tax limit of the choice (a pipeline "
                           "takes its gate's alignment_tax.max)")

    @field_validator("thresholds")
    @classmethod
    def _gammas(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= t <= 1.0 for t in v):
            raise ValueError("thresholds are probabilities in [0, 1]")
        return sorted(set(v))

    @model_validator(mode="after")
    def _kinds(self) -> "SwitchSweep":
        kinds = {es.kind for es in self.eval_sets}
        if not kinds & set(ALIGNMENT_KINDS) or not kinds & set(CAPABILITY_KINDS):
            raise ValueError("sweep.eval_sets needs an alignment or harmful set (what is chosen for) and a "
                             "capability set (the alignment tax it must keep within max_tax)")
        return self


class JobResources(BaseConfig):
    """What one generation job (a method with a base on an eval set) reserves on the Ray cluster."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = Field(None, ge=0, description="null: 1 for a job that runs a model in-process when "
                                   "compute asks for a GPU (cuda, or auto on a cluster that has GPUs), else 0 (a "
                                   "served base needs none: its server has them)")


class RayFanOut(BaseConfig):
    """engine ray: where the jobs run and what each reserves. The run's working directory, its output and local
    models must be on storage every Ray node mounts at the same path (the jobs write their generations there)."""

    address: str | None = Field(None, description="the cluster (ray.init's address, e.g. ray://head:10001 or "
                                "head:6379); default: RAY_ADDRESS (set inside a Ray job), else a Ray started for "
                                "this run on this machine, on loopback")
    resources: JobResources = Field(JobResources(), description="each job's reservation")
    bases: dict[str, JobResources] = Field({}, description="per base name: its jobs' reservation instead (an "
                                           "in-process 70B base spread over 4 GPUs: {num_gpus: 4})")
    autoscaling: bool = Field(False, description="the cluster adds nodes on demand (KubeRay's autoscaler): a job "
                              "larger than every node present waits instead of being refused")


class EvalSpec(BaseConfig):
    seed: int = 0
    eval_sets: list[EvalSet] = Field(min_length=1)
    methods: list[str] = Field(["wsd", "base_only"], description="decoding methods; base_only is always run (the "
                               "reference for win rates and the alignment tax)")
    untuned: ModelSource | None = Field(None, description="the pilot's reference for implicit-reward methods "
                                        "(default: the model the checkpoint's last stage started from)")
    wsd: WSDConfig = WSDConfig()
    metrics: MetricsConfig = MetricsConfig()
    harness: HarnessConfig | None = Field(None, description="capability tasks through lm-evaluation-harness, "
                                          "against WSD and base-only behind `pilot wsd serve`")
    sweep: SwitchSweep | None = Field(None, description="choose WSD's switch setting per base on a calibration "
                                      "split first; the eval sets are then measured at it (and it ships as wsd.json)")
    report_to: Literal["none", "mlflow"] = Field("none", description="mlflow: the report's figures, parameters and "
                                                 "files as one MLflow run (MLFLOW_TRACKING_URI; the mlflow extra)")
    # how the generations run changes no result: out of the dump, so stage keys, config hashes and reports are
    # the same under either engine (as a served model's client settings are)
    engine: Literal["local", "ray"] = Field("local", exclude=True, description="local: each generation job here, "
                                            "one after another; ray: each (eval set, base, method) job a Ray task "
                                            "with its resources (`ray`), gathered into the same report")
    ray: RayFanOut = Field(RayFanOut(), exclude=True, description="engine ray: the cluster and the jobs' resources")
    unsafe_code_execution: bool = Field(False, description="code sets: run the models' programs without a kernel "
                                        "boundary where bubblewrap cannot be set up (a disposable container only; "
                                        "the report records it). Off: such a run refuses (exit 2)")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        allowed = [name for name, m in METHODS.items() if m.validation]
        bad = [m for m in v if m not in allowed]
        if bad:
            why = "is for `pilot wsd generate` only" if bad[0] in METHODS else "is unknown"
            raise ValueError(f"method {bad[0]!r} {why}; choose from {', '.join(allowed)}")
        check_unique(v, "method")
        return v if "base_only" in v else [*v, "base_only"]

    @model_validator(mode="after")
    def _sets(self) -> "EvalSpec":
        check_unique([s.name for s in self.eval_sets] + [t.name for t in (self.harness.tasks if self.harness
                                                                          else [])], "eval set or harness task")
        ae = self.metrics.alpaca_eval
        for es in self.eval_sets if ae else []:
            if es.format != "alpaca_eval":
                continue
            if es.reference_generator != "gpt4_1106_preview":
                raise ValueError(f"eval set {es.name}: AlpacaEval 2 (metrics.alpaca_eval) compares against GPT-4 "
                                 "Turbo's reference outputs: set reference_generator: gpt4_1106_preview (and read "
                                 "alpaca_eval_gpt4_baseline.json)")
            if ae.glm_data and (es.limit or es.categories):
                raise ValueError(f"eval set {es.name}: AlpacaEval's length-controlled GLM is fitted on all its "
                                 "instructions: no limit or categories with metrics.alpaca_eval.glm_data")
        if self.sweep:
            self._check_sweep(self.sweep)
        return self

    def _check_sweep(self, sweep: SwitchSweep) -> None:
        if "wsd" not in self.methods:
            raise ValueError("sweep chooses WSD's switch setting: methods must include wsd")
        kinds = {es.kind for es in sweep.eval_sets}
        if not (self.metrics.win_rate or self.metrics.harmlessness and "harmful" in kinds):
            raise ValueError("sweep chooses the most aligned setting: configure metrics.win_rate, or "
                             "metrics.harmlessness with a harmful calibration set")
        check_unique([s.name for s in self.eval_sets + sweep.eval_sets], "eval set (gated or calibration)")

        def data(es: EvalSet):
            return (es.path and str(Path(es.path).resolve()), es.hub and es.hub.model_dump_json())

        gated = {data(s) for s in self.eval_sets}
        shared = [s.name for s in sweep.eval_sets if data(s) in gated]
        if shared:
            raise ValueError(f"sweep eval set {shared[0]} reads a gated eval set's data: the calibration split "
                             "must be kept apart from what the gate measures")
        sweep.windows = sweep.windows or [self.wsd.window]
        sweep.rules = sweep.rules or [self.wsd.rule]
        too_long = [w for w in sweep.windows if 0 < self.wsd.max_draft_tokens < w]
        if too_long:
            raise ValueError(f"sweep window {too_long[0]} is longer than wsd.max_draft_tokens "
                             f"{self.wsd.max_draft_tokens}: no window could ever be scored")


def check_rules_for_bases(spec: EvalSpec, bases: list[ModelSource]) -> None:
    """The relative rule reads the pilot's own probabilities while it drafts: refused with a served base."""
    served = [b.name for b in bases if b.url]
    rules = {spec.wsd.rule, *(spec.sweep.rules if spec.sweep else [])}
    if served and "relative" in rules and "wsd" in spec.methods:
        raise ValueError(f"wsd.rule relative runs with in-process models; base {served[0]} is on a server: sweep "
                         "and decode with the absolute rule there")


def check_fanout_bases(spec: EvalSpec, bases: list[ModelSource]) -> None:
    """ray.bases names bases the run has."""
    unknown = sorted(set(spec.ray.bases) - {b.name for b in bases})
    if unknown:
        raise ValueError(f"ray.bases: no base named {unknown[0]!r} (bases: {', '.join(b.name for b in bases)})")


class ValidationConfig(EvalSpec):
    name: str
    output_dir: str = Field("validation", description="reports go to <output_dir>/<name>/<checkpoint dir name>")
    bases: list[ModelSource] = Field(min_length=1, description="WSD runs with each of them")

    _name = field_validator("name")(config_name("validation name"))

    @model_validator(mode="after")
    def _bases(self) -> "ValidationConfig":
        check_unique([b.name for b in self.bases], "base model")
        check_rules_for_bases(self, self.bases)
        check_fanout_bases(self, self.bases)
        return self

    def spec(self) -> EvalSpec:
        return EvalSpec(**{k: getattr(self, k) for k in EvalSpec.model_fields})
