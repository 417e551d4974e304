"""The training data: a split of a dataset directory, and the checks a chat pilot must pass before training."""

from __future__ import annotations

from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.manifest import fingerprint, read_manifest

COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}


def load_split(dataset: str | Path, stage: str):
    """The `sft` or `dpo` split (only the columns TRL reads) and the fingerprint of its dataset directory."""
    import datasets

    d = Path(dataset)
    read_manifest(d, kind="dataset")
    try:
        dd = datasets.load_from_disk(str(d / "dataset"))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{d}: no readable datasets copy under dataset/ ({str(e).splitlines()[0]})") from None
    if stage not in dd:
        raise UserError(f"{d}: no {stage!r} split (has: {', '.join(dd)}); run `pilot preferences` on the curated "
                        "dataset first")
    split = dd[stage]
    if split.num_rows == 0:
        raise UserError(f"{d}: the {stage!r} split is empty")
    missing = [c for c in COLUMNS[stage] if c not in split.column_names]
    if missing:
        raise UserError(f"{d}: the {stage!r} split lacks column {missing[0]!r}")
    return split.select_columns(list(COLUMNS[stage])), fingerprint(d / "dataset")


def check_chat_tokenizer(tok, template: str, where: str) -> None:
    """WSD needs a pilot that ends its turn with the tokenizer's EOS (a pilot that never stops drafts until the
    budget), and SFT must train that token: it lies inside the assistant's {% generation %} block."""
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    text = tok.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": "MARK"}],
                                   chat_template=template, tokenize=False)
    after = text.split("MARK", 1)[1]
    if tok.eos_token is None or not after.lstrip().startswith(tok.eos_token):
        raise UserError(f"{where}: an assistant turn ends with {after.strip()[:20]!r}, not the EOS token "
                        f"{tok.eos_token!r}: the trained pilot would not stop where generation stops")
    if not is_chat_template_stop_token_trained(tok, template):
        raise UserError(f"{where}: the assistant's end-of-turn token {tok.eos_token!r} lies outside the template's "
                        "{% generation %} block, so SFT would never teach the pilot to stop")
