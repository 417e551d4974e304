"""Where a model comes from, for every stage: a local directory or hub id, a tiny model built locally, or an
OpenAI-compatible server (vLLM)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from pilot_core.config import BaseConfig
from pilot_core.hub_items import HubRef, model_refs
from pilot_core.models.tiny import TinyModelSpec, cached_tiny_model
from pilot_core.names import config_name


class ModelSource(BaseConfig):
    """Exactly one of `path` (local directory or hub id), `tiny` (built in-process and cached) or `url` (an
    OpenAI-compatible server such as vLLM, serving `served_model`; the tokenizer is loaded locally from
    `tokenizer`, default `served_model`). `url` may list several replicas of the one served model: requests spread
    over them (`openai_server.Replicas`). A router in front of replicas is one URL, as any server is."""

    name: str
    path: str | None = None
    tiny: TinyModelSpec | None = None
    url: str | list[str] | None = Field(None, description="an OpenAI-compatible server's base URL (http(s)://…/v1); "
                                        "a list: replicas serving the same model, each request sent to the one "
                                        "with the fewest in flight and retried on another if it fails; a router "
                                        "in front of replicas is one URL")
    served_model: str | None = None
    tokenizer: str | None = Field(None, description="for url sources: tokenizer path or hub id")
    revision: str | None = Field(None, description="for hub ids (path, or a url source's tokenizer): the commit to "
                                 "read; pin one in production, or a changed upstream is silently used")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    # client settings for url sources; they change no result, so resumable outputs and stage keys ignore them
    timeout_s: float = Field(120.0, gt=0, exclude=True, description="for url sources: seconds per request")
    max_retries: int = Field(5, ge=0, le=20, exclude=True,
                             description="for url sources: retries with backoff on 429, 5xx, timeouts, broken bodies")
    trust_remote_code: bool = False

    _name = field_validator("name")(config_name("model name"))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | list[str] | None) -> str | list[str] | None:
        if not isinstance(v, list):
            if v is not None and not v.startswith(("http://", "https://")):
                raise ValueError("a url must start with http:// or https://")
            return v
        if not v:
            raise ValueError("a list of replica urls needs at least one")
        for i, u in enumerate(v):
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"replica {i} ({u!r}) must start with http:// or https://")
            if u.rstrip("/") in (w.rstrip("/") for w in v[:i]):
                raise ValueError(f"replica {i} ({u!r}) is listed twice")
        return v[0] if len(v) == 1 else v  # one replica is a url: the same config, the same stage key

    @property
    def urls(self) -> list[str]:
        """The server's replicas (one for a single url; none for a local model)."""
        return [] if self.url is None else [self.url] if isinstance(self.url, str) else list(self.url)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        given = [k for k in ("path", "tiny", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, tiny, url (got {', '.join(given) or 'none'})")
        if self.revision and self.tiny:
            raise ValueError("revision is for hub ids; a tiny model has none")
        if self.url and not self.served_model:
            raise ValueError("a url source needs served_model (the model name the server serves)")
        return self

    def hub_refs(self) -> list[HubRef]:
        return model_refs(self)

    def local_path(self) -> str:
        """The local directory or hub id (tiny models are built once and cached)."""
        if self.tiny is not None:
            return str(cached_tiny_model(self.tiny))
        if self.path is None:
            raise ValueError(f"model {self.name} is served at {', '.join(self.urls)}, not local")
        return self.path
