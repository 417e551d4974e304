"""The WSD server's metrics in Prometheus' text format (`GET /metrics`), named after vLLM's `vllm:` metrics with a
`pilot:` prefix so one dashboard reads both: requests by outcome, prompt and generation tokens, answers waiting
and running, batch occupancy, WSD's switches and drafts, and, with the models on servers, the requests and tokens
each model was asked for (`CallFigures`). The unit of the queue and running gauges is an answer (a choice: a
request with n=4 is four), as vLLM's are sequences. Each app has its own registry, so several servers in one
process (tests, the GPU suite) count apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from pilot_core.method_record import MethodRecord, WSDTrace

LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0)  # vLLM's e2e latency buckets, seconds
OUTCOMES = ("ok", "rejected", "timeout", "cancelled", "error", "invalid")


def outcome_of(status: int) -> str:
    """A request's outcome label from its HTTP status: 429 rejected (queue full), 504 timeout, 499 the client went
    away, 5xx error, another 4xx invalid."""
    return {200: "ok", 429: "rejected", 504: "timeout", 499: "cancelled"}.get(
        status, "error" if status >= 500 else "invalid")


class ServerMetrics:
    """The counters a server updates and the gauges read from its backend at each scrape."""

    def __init__(self, backend):
        self._wsd_n = self._switched_n = 0  # for the switch rate (updated on the event loop only)
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pilot:requests", "HTTP requests answered, by outcome (ok; rejected: 429, the queue "
                                "was full; timeout: 504; cancelled: the client went away; error: 5xx; invalid: "
                                "another 4xx)", ["outcome"], registry=r)
        for o in OUTCOMES:
            self.requests.labels(o)  # every outcome listed from the start, at 0
        self.answers = Counter("pilot:request_success", "answers (choices) finished, by finish reason",
                               ["finished_reason"], registry=r)
        self.prompt_tokens = Counter("pilot:prompt_tokens", "prompt tokens of the answers finished (the base's "
                                     "template, as `usage` counts them)", registry=r)
        self.generation_tokens = Counter("pilot:generation_tokens", "answer tokens (kept draft + the base's "
                                         "continuation, as `usage` counts them)", registry=r)
        self.draft_tokens = Counter("pilot:draft_tokens", "tokens the pilot drafted (WSD), kept or not", registry=r)
        self.kept_draft_tokens = Counter("pilot:kept_draft_tokens", "draft tokens kept in the answers (WSD)",
                                         registry=r)
        self.wsd_answers = Counter("pilot:wsd_answers", "answers decoded by WSD", registry=r)
        self.switched = Counter("pilot:wsd_switched", "WSD answers in which the base took over (a window reached "
                                "the threshold)", registry=r)
        Gauge("pilot:switch_rate", "share of WSD answers that switched, since the server started",
              registry=r).set_function(self.switch_rate)
        self.model_requests = Counter("pilot:model_requests", "requests to the model servers (served models), by "
                                      "model", ["model"], registry=r)
        self.model_prompt_tokens = Counter("pilot:model_prompt_tokens", "prompt tokens sent to the model servers "
                                           "(prefill; the pilot's where known), by model", ["model"], registry=r)
        self.model_generation_tokens = Counter("pilot:model_generation_tokens", "tokens the model servers "
                                               "generated, by model", ["model"], registry=r)
        self.scoring_requests = Counter("pilot:base_scoring_requests", "the base's prompt-scoring requests (WSD's "
                                        "draft checks)", registry=r)
        Gauge("pilot:num_requests_waiting", "answers admitted and waiting for the scheduler", registry=r
              ).set_function(lambda: len(backend.queue))
        Gauge("pilot:num_requests_running", "answers being decoded", registry=r).set_function(lambda: backend.running)
        Gauge("pilot:batch_occupancy", "answers being decoded over the most that can run at once (in-process: the "
              "batch size)", registry=r).set_function(lambda: backend.running / max(backend.capacity, 1))
        self.e2e = Histogram("pilot:e2e_request_latency_seconds", "seconds from admission to the answer, per "
                             "answer", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("pilot:request_queue_time_seconds", "seconds an answer waited in the queue",
                                    buckets=LATENCY_BUCKETS, registry=r)

    def switch_rate(self) -> float:
        return self._switched_n / self._wsd_n if self._wsd_n else 0.0

    def request(self, status: int) -> None:
        self.requests.labels(outcome_of(status)).inc()

    def answer(self, record: MethodRecord, finish: str, prompt_tokens: int, e2e_s: float,
               queue_s: float | None) -> None:
        """One finished answer."""
        self.answers.labels(finish).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(record.completion_tokens)
        self.e2e.observe(e2e_s)
        if queue_s is not None:
            self.queue_time.observe(queue_s)
        if isinstance(record.trace, WSDTrace):
            self.wsd_answers.inc()
            self.switched.inc(record.trace.switched)
            self._wsd_n, self._switched_n = self._wsd_n + 1, self._switched_n + record.trace.switched
            self.draft_tokens.inc(record.pilot_tokens)
            self.kept_draft_tokens.inc(record.trace.kept_draft_tokens)
        c = record.calls
        if c is not None:
            for model, n, prompt, generated in (("pilot", c.pilot_requests, c.pilot_prefill_tokens,
                                                 c.pilot_decode_tokens),
                                                ("base", c.base_requests, c.base_prefill_tokens,
                                                 c.base_decode_tokens)):
                self.model_requests.labels(model).inc(n)
                self.model_prompt_tokens.labels(model).inc(prompt or 0)
                self.model_generation_tokens.labels(model).inc(generated)
            self.scoring_requests.inc(c.base_scoring_requests)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry's samples and their content type, in the format the scraper's `Accept` asks for, as
        prometheus_client's own handler (and so vLLM's /metrics) answers: Prometheus' text format (0.0.4) by
        default, OpenMetrics where asked."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
