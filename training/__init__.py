"""Pilot training: a thin adapter over TRL's SFTTrainer and DPOTrainer (+ PEFT LoRA, DeepSpeed presets)."""
