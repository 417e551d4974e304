"""Text that leaves a process we do not trust (an untrusted program's error line) is scrubbed of anything shaped
like a credential before it is kept: the values of this process's secret-named environment variables, and the
shapes of the keys the field's services issue."""

from __future__ import annotations

import os
import re

MASK = "[redacted]"
# names of environment variables whose values are secrets (OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...)
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
SHAPES = re.compile("|".join((
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI, Anthropic (sk-ant-...)
    r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{10,}",  # Stripe
    r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face
    r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}",  # GitHub
    r"\bglpat-[A-Za-z0-9_-]{16,}",  # GitLab
    r"\bx(?:ox[abprs]|app)-[A-Za-z0-9-]{10,}",  # Slack
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\b[Bb](?:earer|asic)\s+[A-Za-z0-9._~+/=-]{8,}",  # Authorization header values
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:[^\s@/]+@",  # credentials in a URL (scheme://user:password@)
    # NAME=value where the name says secret (OPENAI_API_KEY=..., access_token: ..., DB_PASSWORD=...)
    r"(?i:[a-z0-9_-]*(?:api[_-]?key|token|secret|passw(?:or)?d|credential)[a-z0-9_-]*)[\"']?\s*[:=]\s*[\"']?"
    r"[^\s\"',;]{6,}",
    r"\b[A-Za-z0-9+/_-]{40,}={0,2}",  # any long unbroken base64 / hex run
)))


def secret_values(environ=None) -> list[str]:
    """The values (8 characters or more) of the secret-named variables of this process's environment."""
    env = os.environ if environ is None else environ
    return sorted({v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 8}, key=len, reverse=True)


def scrub(text: str, environ=None) -> str:
    """`text` with this process's secret values and every credential-shaped run replaced by [redacted]."""
    for v in secret_values(environ):
        text = text.replace(v, MASK)
    return SHAPES.sub(MASK, text)
