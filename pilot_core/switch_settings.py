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


def wsd_json(choices: dict[str, SwitchChoice]) -> dict:
    """What a published version ships as wsd.json: per base the setting and the sweep's figures."""
    return {"bases": {name: {"threshold": c.threshold, "window": c.window, "rule": c.rule, "max_tax": c.max_tax,
                             "within_limit": c.within_limit, "warnings": c.warnings,
                             **c.chosen.model_dump(mode="json", exclude={"rule", "window", "threshold"}),
                             "sweep": [p.model_dump(mode="json") for p in c.sweep]}
                      for name, c in choices.items()}}


def published_setting(pilot_dir: str | Path, base_name: str) -> dict | None:
    """{threshold, window, rule} for `base_name` from a published pilot's wsd.json; None where the pilot ships
    none; for a base it does not know, None with a warning that names the ones it knows."""
    path = Path(pilot_dir) / FILE
    if not path.is_file():
        return None
    try:
        bases = json.loads(path.read_text(encoding="utf-8"))["bases"]
        setting = bases.get(base_name)
        if setting is not None:
            setting = {k: setting[k] for k in SETTING_KEYS}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a wsd.json of switch settings ({type(e).__name__}: {e})") from None
    if setting is None:
        log.warning("%s has no switch setting for base %r (it has: %s); using the defaults", path, base_name,
                    ", ".join(sorted(bases)) or "none")
    return setting
