"""Connecting to Ray, one way for every stage that runs on it: training's launcher (Ray Train), the preference
stage's calls (Ray Data) and validation's fan-out (Ray tasks).

The cluster is the one named (a stage's `ray.address`), else RAY_ADDRESS's (Ray's own variable: its GCS host:port,
or ray://host:port; a Ray job has it set), else a Ray started here for the run: on loopback only, with a token of
this run's own. Two things about Ray that this handles once:

- Ray turns 127.0.0.1 into the machine's routable address and binds its servers to every interface, unless told
  this is a one-machine cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; ray/_private/services.py,
  get_node_ip_address). It reads that when imported; the processes of a Ray started here inherit it.
- `ray start` turns token authentication on wherever a token is at hand (~/.ray/auth_token, which any local
  `ray.init()` of Ray 2.60 leaves behind; ray/scripts/scripts.py), but a client sends its token only when
  RAY_AUTH_MODE=token: so it is set where a token is at hand (a cluster without authentication accepts a client
  that sends one). A Ray started here gets a token of its own (RAY_AUTH_TOKEN, this process's), not the machine's.

Only settings, never secrets, go to the workers through Ray (`forwarded_env`): Ray's dashboard shows a job's
runtime environment; API keys are read on the nodes from their own environment.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.processes import free_port

LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE = "RAY_AUTH_MODE"
# settings (not secrets) a worker needs to find models and caches as this process does
FORWARDED_ENV = ("PILOT_CACHE_DIR", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _job_env() -> dict[str, str]:
    """The environment variables of the Ray job this process is the driver of (none outside a job): Ray merges
    ray.init's into them and refuses a key set twice (ray/_private/worker.py, RAY_JOB_CONFIG_JSON_ENV_VAR)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return ((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}) if raw else {}


@functools.cache
def _run_token() -> str:
    """One token per process: Ray's client reads it once, so a second local Ray in this process needs the same."""
    return secrets.token_hex(32)


def _host_port(address: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address)
    return (m[1], int(m[2])) if m else None


def _on_loopback(address: str) -> bool:
    hp = _host_port(address)
    if hp is None:
        return False
    try:
        return hp[0] == "localhost" or ipaddress.ip_address(hp[0]).is_loopback
    except ValueError:
        return False


def _token_at_hand() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def client_env(address: str | None) -> dict[str, str]:
    """What this process's environment needs, beyond what is set, before ray is imported: see the module's text."""
    if address:
        env = {LOOPBACK: "0"} if _on_loopback(address) else {}
        if _token_at_hand():
            env[AUTH_MODE] = "token"
    else:
        env = {LOOPBACK: "0", AUTH_MODE: "token", "RAY_AUTH_TOKEN": _run_token()}
        if AUTH_MODE in os.environ:  # the user chose the mode; a token of theirs, if any, too
            env.pop("RAY_AUTH_TOKEN")
    return {k: v for k, v in env.items() if k not in os.environ}


def import_ray(address: str | None = None):
    """The `ray` module, set up as a client of `address` (None: of a Ray to be started here): the environment as
    `client_env` says, read again by Ray if it was imported before (its token too: a process may talk to several
    clusters one after another, as the tests do)."""
    os.environ.update(client_env(address))
    try:
        import ray
    except ImportError as e:
        raise UserError(f"this needs Ray, which is not installed ({e}): pip install 'pilot-wsd[ray]'") from None
    try:  # Ray's internals (2.60): where they moved, Ray reads the environment at its own times
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return ray
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return ray


def check_reachable(address: str, what: str) -> None:
    """Ray's own connect tries for a quarter of an hour where nothing answers: asked first, briefly, at the address
    Ray will dial (it puts this machine's routable address in place of a loopback one, unless told not to)."""
    dial = address
    if not address.startswith("ray://"):
        from ray._private.services import canonicalize_bootstrap_address

        try:
            dial = canonicalize_bootstrap_address(address) or address
        except (ValueError, ConnectionError) as e:  # a malformed address; "auto" with no cluster found
            raise UserError(f"{what} {address}: {e}") from None
    hp = _host_port(dial)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=5).close()
    except OSError as e:
        there = "there" if dial == address else f"at {dial}"
        raise UserError(f"{what} {address}: no Ray cluster answers {there} ({e.strerror or e}); start one "
                        "(ray start --head), or leave it unset to run on a Ray started here") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
            env_vars: dict[str, str] | None = None, what: str = "RAY_ADDRESS"):
    """(ray, whether this call connected it): to `address`, else RAY_ADDRESS's cluster, else a Ray started here
    (`num_cpus`; `dashboard`: with its dashboard, on loopback, and RAY_ADDRESS naming it in the workers' environment:
    Ray Train's placement-group cleaner polls the dashboard's state API, and finds this Ray so, not another one on
    the machine). `env_vars`: set in every worker's environment (only
    settings). A caller already connected keeps its connection. `what` names the address in errors."""
    target = address or os.environ.get("RAY_ADDRESS")
    already = sys.modules.get("ray")
    if already is not None and already.is_initialized():
        return already, False
    ray = import_ray(target)
    job = _job_env()  # a job's own variables reach its tasks already
    runtime_env = {"env_vars": {k: v for k, v in {**forwarded_env(), **(env_vars or {})}.items() if k not in job}}
    if target:
        check_reachable(target, what)
        try:
            ray.init(address=target, runtime_env=runtime_env, logging_level=logging.WARNING)
        except ValueError as e:  # not an address Ray reads (its dashboard's http://... is for `ray job submit`)
            raise UserError(f"{what} {target}: {e} (use the cluster's host:port, or ray://host:port)") from None
        except ConnectionError as e:
            if type(e.__cause__).__name__ == "AuthenticationError":
                raise UserError(f"{what} {target}: the cluster refused this client's authentication token; give the "
                                "cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)") from None
            raise UserError(f"{what} {target}: no Ray cluster there ({str(e).splitlines()[0]})") from None
        return ray, True
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOOPBACK] != "0"  # in case ray was imported before
    kwargs = {}
    if dashboard:
        port = free_port()
        os.environ[ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE] = str(port)
        runtime_env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        kwargs["dashboard_host"] = "127.0.0.1"
    # "local": a Ray of this run's own, never one that `ray start` left running on this machine
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=dashboard,
             runtime_env=runtime_env, logging_level=logging.WARNING, **kwargs)
    return ray, True


_SET_HERE = (LOOPBACK, AUTH_MODE, "RAY_AUTH_TOKEN", "RAY_GCS_SERVER_PORT")  # the last: GCS_PORT_ENVIRONMENT_VARIABLE


@contextlib.contextmanager
def restored_env() -> Iterator[None]:
    """The variables this module sets are as they were after the block (a local Ray's token must not go to a
    cluster connected later)."""
    before = {k: os.environ.get(k) for k in _SET_HERE}
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(address: str | None = None, **kwargs) -> Iterator[object]:
    """`connect`, for the time of the block: a connection made here is closed after it (which stops a Ray started
    here), and the environment is as it was."""
    with restored_env():
        ray, ours = connect(address, **kwargs)
        try:
            yield ray
        finally:
            if ours:
                ray.shutdown()
