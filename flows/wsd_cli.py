"""`pilot wsd generate` (WSD over a prompt file) and `pilot wsd serve` (WSD behind an OpenAI-compatible API);
thin: parsing only."""

from __future__ import annotations

import click

from flows.compute_options import compute_from, compute_options
from pilot_core.errors import UserError
from wsd_inference.methods import METHODS


@click.group()
def wsd() -> None:
    """Weak-to-Strong Decoding and the methods it is compared with."""


def model_options(f):
    """The models and decoding options `pilot wsd generate` and `pilot wsd serve` share."""
    options = [
        click.option("--pilot", required=True, help="pilot model: a local directory or hub id (a chat model), or "
                     "the base URL of its OpenAI-compatible server"),
        click.option("--base", required=True, help="base model: a local directory or hub id, or a server's URL "
                     "(replicas of one served model: their URLs, comma-separated)"),
        click.option("--base-name", help="the base's name in a published pilot's wsd.json, whose switch setting "
                     "(threshold, window, rule) is used where no option, --config or --set gives one of them "
                     "(default: the entry validated with this --base)"),
        click.option("--untuned", help="the pilot's untuned reference (bon, cbs, eft): a local directory or hub id"),
        click.option("--config", "config_path", help="configs/wsd/*.yaml (flags below override it)"),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override a config key, e.g. --set cbs.beam_width=4 (repeatable)"),
        click.option("--window", type=int, help="w, default 6"),
        click.option("--threshold", type=float, help="gamma, default 0.8"),
        click.option("--max-draft-tokens", type=int, help="default 512"),
        click.option("--max-new-tokens", type=int, help="total budget in base tokens, default 2048"),
        click.option("--batch-size", type=int, help="default 8"),
        click.option("--batching", type=click.Choice(["auto", "continuous", "static"]), help="in-process models: "
                     "continuous, an answer joins the running batch at the next step and leaves it when done (wsd, "
                     "base_only, urial, pilot_only; the pilot does not speculate); static, batch by batch, each "
                     "until its last answer is done (the pilot speculates for the base); auto (the default): serve "
                     "batches continuously where the method has it, --batch-size > 1 and no --speculate K; "
                     "generate, statically"),
        click.option("--chunk-size", type=int, help="draft tokens scored per base pass, default 8"),
        click.option("--temperature", type=float, help="0 = greedy (default)"),
        click.option("--top-p", type=float),
        click.option("--seed", type=int),
        click.option("--speculate", type=SpeculateK(), metavar="auto|K", help="the pilot proposes the base's "
                     "next tokens, checked in one base pass (same answers, fewer base passes; in-process bases): "
                     "auto (the default) where it pays, K to start at K proposals (adapted per row, rounds still "
                     "only where they pay), 0 = off"),
        compute_options,
        click.option("--trust-remote-code", is_flag=True, help="allow model repos to run their own code (off by "
                     "default)"),
        click.option("--pilot-model", help="model name on the pilot's server (when --pilot is a URL)"),
        click.option("--base-model", help="model name on the base's server (when --base is a URL)"),
        click.option("--base-tokenizer", help="the base's tokenizer (path or hub id) when --base is a URL; "
                     "default: --base-model"),
        click.option("--pilot-tokenizer", help="the pilot's tokenizer when --pilot is a URL and the method hands it "
                     "token ids (nudging); default: --pilot-model"),
        click.option("--api-key-env", help="environment variable holding the model servers' API key"),
        click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
                     help="seconds per model server request"),
        click.option("--max-retries", type=click.IntRange(0, 20), default=5, show_default=True,
                     help="retries per model server request (429, 5xx, timeouts, broken responses)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class SpeculateK(click.ParamType):
    """`auto` or a k from 0 to 64."""

    name = "auto|K"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            k = int(value)
        except ValueError:
            k = -1
        if not 0 <= k <= 64:
            self.fail(f"{value!r} is neither auto nor a k from 0 to 64", param, ctx)
        return k


def _published_setting(pilot: str, base: str, base_name: str | None, base_model: str | None, given: set) -> dict:
    """The switch setting a published pilot (a directory with wsd.json) ships for this base, where the user set
    none of its keys (options, --config keys, --set keys): the three go together (a gamma means something else
    under another rule or window)."""
    from pathlib import Path

    from pilot_core.switch_settings import SETTING_KEYS, published_setting

    if pilot.startswith(("http://", "https://")) or not Path(pilot).is_dir() or given & set(SETTING_KEYS):
        return {}
    found = published_setting(pilot, base, base_model, base_name)
    if found is None:
        return {}
    name, setting = found
    click.echo(f"{pilot}: the published switch setting for base {name!r}: "
               + ", ".join(f"{k}={v}" for k, v in setting.items()), err=True)
    return setting


def resolve_models(pilot, base, untuned, config_path, overrides, device, dtype, attn_implementation, device_map,
                   trust_remote_code, pilot_model, base_model, base_tokenizer, pilot_tokenizer, api_key_env,
                   timeout_s, max_retries, base_name=None, **flags):
    """(pilot, base, untuned sources, the decoding config, compute) from the shared options."""
    from pilot_core.config import apply_overrides, load_config, read_yaml, validate_config
    from pilot_core.models.source import ModelSource
    from wsd_inference.config import WSDConfig

    data = load_config(WSDConfig, config_path).model_dump() if config_path else {}
    speculate = flags.pop("speculate", None)
    given = {k for k, v in flags.items() if v is not None} | {o.split("=")[0].strip() for o in overrides}
    if config_path:  # load_config checked the file; its own keys are what it sets
        given |= set(read_yaml(config_path)[0] or {})
    data.update(_published_setting(pilot, base, base_name, base_model, given))
    data.update({k: v for k, v in flags.items() if v is not None})  # option names are the config keys
    if speculate is not None:
        data["speculation"] = {**data.get("speculation", {}), "tokens": speculate}
    origin = apply_overrides(data, list(overrides))
    cfg = validate_config(WSDConfig, data, source="options", origin=origin)
    sources = []
    for role, where, model, tok in (("pilot", pilot, pilot_model, pilot_tokenizer),
                                     ("base", base, base_model, base_tokenizer)):
        is_url = where.startswith(("http://", "https://"))
        if is_url and not model:
            raise UserError(f"--{role}-model is required when --{role} is a URL (the name the server serves)")
        url = where.split(",") if is_url and "," in where else where  # replicas
        fields = {"url": url, "served_model": model, "tokenizer": tok, "timeout_s": timeout_s,
                  "max_retries": max_retries} if is_url else {"path": where}
        sources.append(validate_config(ModelSource, {"name": role, "trust_remote_code": trust_remote_code,
                                                     "api_key_env": api_key_env, **fields}, source=f"--{role}"))
    untuned_src = untuned and validate_config(ModelSource, {"name": "untuned", "path": untuned,
                                                            "trust_remote_code": trust_remote_code}, source="--untuned")
    return sources[0], sources[1], untuned_src, cfg, compute_from(device, dtype, attn_implementation, device_map)


@wsd.command()
@click.option("--input", "input_path", required=True, help="JSONL: {id, messages} or {id, prompt} per line")
@click.option("--output", "output_path", required=True, help="JSONL of results; rerunning resumes it")
@click.option("--method", default="wsd", show_default=True, type=click.Choice(list(METHODS)),
              help="wsd, or a method to compare with it: " + "; ".join(f"{m.name}: {m.summary}"
                                                                       for m in METHODS.values()))
@model_options
def generate(input_path, output_path, method, **options) -> None:
    """Generate answers with Weak-to-Strong Decoding (the pilot drafts, the base takes over once confident),
    or with a method it is compared with (--method).

    --pilot and --base are local model directories (or hub ids), or base URLs of OpenAI-compatible servers
    such as vLLM (http://host:port/v1, with --pilot-model / --base-model naming the served models)."""
    from pilot_core.prompts import load_prompts
    from wsd_inference.runner import generate_to_file

    pilot, base, untuned, cfg, compute = resolve_models(**options)
    prompts = load_prompts(input_path)
    s = generate_to_file(pilot, base, prompts, cfg, output_path, compute, method=method, untuned=untuned)
    if not s.new:
        click.echo(f"{output_path}: all {len(prompts)} prompts already done", err=True)
    else:
        click.echo(f"{output_path}: {s.new} new answers ({s.switched} switched to the base), "
                   f"{s.already_done} already done", err=True)


@wsd.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--method", default="wsd", show_default=True,
              type=click.Choice([m.name for m in METHODS.values() if m.servable]),
              help="what the server answers with: wsd, or base_only (the base alone, served the same way, to "
              "compare with)")
@click.option("--served-model-name", help="the model name clients ask for (default: the method's name)")
@click.option("--server-api-key-env", metavar="VAR", help="environment variable holding the key clients must send "
              "(Authorization: Bearer ...); default: no key")
@click.option("--max-concurrent-requests", type=click.IntRange(1), default=64, show_default=True,
              help="answers (choices) decoded at once: with --pilot/--base URLs, answers whose requests are at the "
              "model servers; in-process, the most in one batch (with --batch-size, the smaller); the rest wait in "
              "the queue")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="answers waiting to run, taken by the request's priority (lower first, as vLLM's `priority`), "
              "first come first served within one; a request whose answers do not fit gets a 429 with Retry-After")
@click.option("--draft-scoring", type=click.Choice(["once", "doubling"]),
              help="the config's draft_scoring (default once): with a served base, when it scores WSD's draft "
              "(same answers either way): once, when the draft is finished or fills the answer's budget (fewest "
              "requests; the continuation reuses the server's prefix cache); doubling, at --chunk-size, 2x, 4x ... "
              "draft tokens (the pilot stops nearer the switch, the base starts sooner; more prefills)")
@click.option("--max-request-bytes", type=click.IntRange(1), default=1 << 20, show_default=True)
@click.option("--max-prompt-tokens", type=click.IntRange(1), default=8192, show_default=True)
@click.option("--max-n", type=click.IntRange(1), default=8, show_default=True, help="largest n (choices) a request "
              "may ask for")
@click.option("--request-timeout-s", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="seconds a request may take from its arrival, waiting in the queue included (then a 504); also "
              "how long SIGTERM waits for requests in flight")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@model_options
def serve(host, port, method, served_model_name, server_api_key_env, max_concurrent_requests, max_queue,
          draft_scoring, max_request_bytes, max_prompt_tokens, max_n, request_timeout_s, log_level,
          **options) -> None:
    """Serve WSD ("pilot + base" as one model) behind an OpenAI-compatible API: /v1/chat/completions (streaming
    too), /v1/completions, /v1/models, /health, /metrics (Prometheus).

    The models are the same as `pilot wsd generate` takes: in-process (answers join the running batch as they
    arrive: --batching) or on servers such as vLLM (--pilot / --base URLs). max_tokens in a request is WSD's
    total budget (default: --max-new-tokens); temperature, where a request gives none, is 1.0 as OpenAI's and
    vLLM's (--temperature sets another). SIGTERM stops accepting requests and finishes the ones in flight."""
    import os

    import uvicorn

    from wsd_inference.api.protocol import ServerLimits
    from wsd_inference.api.router import create_app
    from wsd_inference.serving import make_backend

    key = None
    if server_api_key_env:
        key = os.environ.get(server_api_key_env)
        if not key:
            raise UserError(f"--server-api-key-env {server_api_key_env}: the environment variable is not set")
    # checks the config file before it is read here; --draft-scoring is a config key, as the shared options are
    pilot, base, untuned, cfg, compute = resolve_models(**options, draft_scoring=draft_scoring)
    # a request without temperature samples at 1.0 (OpenAI's and vLLM's default) unless the operator named one:
    # --temperature, `-o temperature=...`, or a --config that sets it (as vLLM's --generation-config)
    named = options.get("temperature") is not None or any(o.split("=")[0].strip() == "temperature"
                                                           for o in options.get("overrides") or ())
    if options.get("config_path") and not named:
        from pilot_core.config import read_yaml

        named = "temperature" in (read_yaml(options["config_path"])[0] or {})
    # loads (and checks) the models before listening
    backend = make_backend(method, pilot, base, cfg, compute, max_queue=max_queue, max_running=max_concurrent_requests)
    limits = ServerLimits(max_request_bytes=max_request_bytes, max_prompt_tokens=max_prompt_tokens,
                          max_tokens=cfg.max_new_tokens, max_n=max_n, request_timeout_s=request_timeout_s,
                          default_temperature=cfg.temperature if named else 1.0)
    name = served_model_name or method
    app = create_app(backend, cfg, name, limits, key)
    how = f", {backend.stats()['batching']} batching" if "batching" in backend.stats() else ""
    click.echo(f"serving {name!r} ({method}{how}) on http://{host}:{port}/v1", err=True)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                  timeout_graceful_shutdown=int(request_timeout_s) + 1)).run()
