"""Validation: every decoding method with every base model on versioned eval sets, the metrics (reward model,
LLM judge, harmlessness, accuracy and the alignment tax, with bootstrap intervals), and the report."""
