"""The chat template a pilot trains with.

SFT limits the loss to the assistant's tokens, which needs `{% generation %}` markers in the template; most
instruct models (Llama 3.x, Qwen 2.5, SmolLM2) ship without them. The training template is, in order: the
recipe's `chat_template:` file when it names one; the model's own when it has markers; TRL's training variant
when TRL knows the family; one of ours (training/chat_templates/, for families TRL lacks) that renders like the
model's own; otherwise a clear error. Whichever is used must render every conversation exactly as the model's
own template does (same token ids, with and without the generation prompt), so the pilot trains on what it will
be prompted with; the checkpoint then ships with the model's own template.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pilot_core.errors import UserError

OURS = Path(__file__).with_name("chat_templates")  # training variants for families TRL has none for
# Conversations both templates must render identically: a first turn with and without a system message, a
# second turn, and finished conversations (what SFT and DPO tokenize).
PROBES = (
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a fact."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello there.\n"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
     {"role": "user", "content": "C"}, {"role": "assistant", "content": "D"}],
)


@dataclass(frozen=True)
class TrainingTemplate:
    text: str
    origin: str  # "model", "trl", or the file it came from

    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def has_markers(template: str) -> bool:
    from trl.chat_template_utils import has_generation_markers

    return has_generation_markers(template)


def _own(tok) -> str:
    t = getattr(tok, "chat_template", None)
    return t["default"] if isinstance(t, dict) else t


def training_template(tok, recipe_file: str | None, where: str) -> TrainingTemplate:
    """The template to train `tok`'s model with (see the module docstring); a UserError names what to do."""
    from trl.chat_template_utils import get_training_chat_template

    own = _own(tok)
    if not own:
        raise UserError(f"{where}: the tokenizer has no chat template (a pilot is a chat model)")
    if recipe_file:
        path = Path(recipe_file)
        if not path.is_file():
            raise UserError(f"chat_template: file not found: {recipe_file}")
        found = TrainingTemplate(path.read_text(encoding="utf-8"), str(recipe_file))
        if not has_markers(found.text):
            raise UserError(f"chat_template: {recipe_file} has no {{% generation %}} markers around the "
                            "assistant's text")
        check_same_rendering(tok, own, found, where)
        return found
    if has_markers(own):
        return TrainingTemplate(own, "model")
    try:
        trl = get_training_chat_template(tok)
    except ValueError:  # TRL does not know this family
        trl = None
    if trl:
        found = TrainingTemplate(trl, "trl")
        check_same_rendering(tok, own, found, where)
        return found
    for path in sorted(OURS.glob("*.jinja")):
        found = TrainingTemplate(path.read_text(encoding="utf-8"), f"training/chat_templates/{path.name}")
        try:
            differs = _first_difference(tok, own, found.text)
        except Exception:  # noqa: BLE001  (a template of another family may raise on these messages: not a match)
            continue
        if differs is None:
            _check_marks(tok, found, where)
            return found
    raise UserError(f"{where}: the chat template has no {{% generation %}} markers, and neither TRL nor Pilot has a "
                    "training variant of it; give the recipe a `chat_template:` file: the model's own template "
                    "with {% generation %}...{% endgeneration %} around each assistant message and its end-of-turn "
                    "token (training/chat_templates/ has examples)")


def _first_difference(tok, own: str, other: str) -> tuple[list[dict], bool] | None:
    """The first probe (and its add_generation_prompt) the two templates render to different token ids."""
    for messages in PROBES:
        agp = messages[-1]["role"] == "user"
        if _render(tok, own, messages, agp) != _render(tok, other, messages, agp):
            return messages, agp
    return None


def _render(tok, template: str, messages, add_generation_prompt: bool) -> list[int]:
    return tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=False,
                                   add_generation_prompt=add_generation_prompt)


def check_same_rendering(tok, own: str, training: TrainingTemplate, where: str) -> None:
    """Every probe conversation renders to the same token ids under both templates, and the training template
    marks some tokens of a finished conversation as the assistant's."""
    differs = _first_difference(tok, own, training.text)
    if differs is not None:
        messages, agp = differs
        a = tok.apply_chat_template(messages, chat_template=own, tokenize=False, add_generation_prompt=agp)
        b = tok.apply_chat_template(messages, chat_template=training.text, tokenize=False, add_generation_prompt=agp)
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise UserError(f"{where}: the training chat template ({training.origin}) renders a conversation "
                        f"differently from the model's own at character {at}: {a[at:at + 30]!r} vs "
                        f"{b[at:at + 30]!r}; the pilot would train on a format it is never prompted with")
    _check_marks(tok, training, where)


def _check_marks(tok, training: TrainingTemplate, where: str) -> None:
    out = tok.apply_chat_template(PROBES[3], chat_template=training.text, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    if not any(out["assistant_masks"]):
        raise UserError(f"{where}: the training chat template ({training.origin}) marks no assistant tokens")
