"""A reward model: a `transformers` sequence-classification model with one output, reading a conversation in
its own chat template. Used by best-of-N (`bon.scorer: reward_model`), by the preference judges and by the
validation metrics, so every stage scores a response the same way."""

from __future__ import annotations

from pilot_core.errors import UserError
from pilot_core.models.compute import Compute
from pilot_core.models.loading import check_head, input_device, load_config, load_tokenizer, load_weights


class RewardModel:
    def __init__(self, path: str, compute: Compute | None = None, trust_remote_code: bool = False,
                 max_length: int = 4096, batch_size: int = 8, revision: str | None = None):
        role = "reward model"
        config = load_config(path, role, trust_remote_code, revision=revision)
        check_head(config, path, role, "reward", trust_remote_code)
        self.tokenizer = load_tokenizer(path, role, trust_remote_code, revision)
        self.model = load_weights(path, role, "reward", compute, trust_remote_code, revision=revision)
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"reward model {path}: the tokenizer has no chat template")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # it finds each row's last real token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.path, self.max_length, self.batch_size = path, max_length, batch_size
        self.device = input_device(self.model)

    def text(self, messages, response: str) -> str:
        conv = [dict(m) for m in messages] + [{"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(conv, tokenize=False)

    def score(self, items: list[tuple[list, str]]) -> list[float]:
        """The reward of each (messages, response) pair, in order."""
        import torch

        out: list[float] = []
        texts = [self.text(m, r) for m, r in items]
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=False, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**enc.to(self.device)).logits
            out.extend(float(x) for x in logits[:, 0].float())
        return out
