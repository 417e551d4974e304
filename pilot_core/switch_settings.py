"""WSD's switch setting per base as a published version ships it (`wsd.json`, written by the release from the
validation report's sweep) and as `pilot wsd generate|serve` read it back when the pilot is a published version:

    {"bases": {"<base name>": {"threshold": γ, "window": w, "rule": "absolute" | "relative",
                               ...the chosen setting's figures, "sweep": [every setting tried]}}}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.report import SwitchChoice

FILE = "wsd.json"
SETTING_KEYS = ("threshold", "window", "rule")
log = logging.getLogger("pilot.wsd")


def wsd_json(choices: dict[str, SwitchChoice], sources: dict[str, dict]) -> dict:
    """What a published version ships as wsd.json: per base the setting, the sweep's figures, and the base as
    validation named it (`source`: path, or url and served_model), so that a user's --base finds its entry."""
    return {"bases": {name: {"threshold": c.threshold, "window": c.window, "rule": c.rule, "max_tax": c.max_tax,
                             "within_limit": c.within_limit, "warnings": c.warnings, "source": sources.get(name, {}),
                             **c.chosen.model_dump(mode="json", exclude={"rule", "window", "threshold"}),
                             "sweep": [p.model_dump(mode="json") for p in c.sweep]}
                      for name, c in choices.items()}}


def _matches(source: dict, base: str, base_model: str | None) -> bool:
    """Whether a --base (a path or a URL with --base-model) is the base validation measured."""
    if base.startswith(("http://", "https://")):
        return source.get("url") == base and (base_model is None or source.get("served_model") == base_model)
    path = source.get("path")
    return bool(path) and (path == base or Path(path).resolve() == Path(base).resolve())


def published_setting(pilot_dir: str | Path, base: str, base_model: str | None = None,
                      base_name: str | None = None) -> tuple[str, dict] | None:
    """(the base's name, {threshold, window, rule}) from a published pilot's wsd.json: the entry named
    `base_name`, else the one whose source is `--base` (a path, or a URL and --base-model). None where the pilot
    ships no wsd.json; for a base it does not know, None with a warning that names the ones it knows."""
    path = Path(pilot_dir) / FILE
    if not path.is_file():
        return None
    try:
        bases = json.loads(path.read_text(encoding="utf-8"))["bases"]
        if base_name is not None:
            name = base_name if base_name in bases else None
        else:
            name = next((n for n, e in bases.items() if _matches(e.get("source") or {}, base, base_model)), None)
        setting = {k: bases[name][k] for k in SETTING_KEYS} if name is not None else None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a wsd.json of switch settings ({type(e).__name__}: {e})") from None
    if setting is None:
        log.warning("%s has no switch setting for base %s (it has: %s); using the defaults", path,
                    repr(base_name) if base_name is not None else base, ", ".join(sorted(bases)) or "none")
        return None
    return name, setting
