"""The models layer: how every stage finds, loads, prompts and calls a model, and nothing about any stage.

  source       where a model comes from (`ModelSource`: a local directory or hub id, a tiny model, a server)
  files        the checks on a local model directory (safetensors only, no symlinks out of an artifact)
  tiny         tiny models built in-process (tests, benchmarks, the demo world)
  loading      load a model and tokenizer with transformers: device, dtype, attention implementation
  templates    the two role templates (a chat model's own, the base's plain [User]/[Assistant]) and stop markers
  ragged       a batch of rows of different lengths over one KV cache, owning the logits it produced
  sampling     the one token-by-token generation loop (greedy or seeded sampling per row)
  reward       a reward model (one-output sequence classifier)
  openai_server  a model behind an OpenAI-compatible server (vLLM): score, continue, chat, stream
  local_chat   a local chat model answering like a server (batched calls with per-call seeds, streaming)
  calls        chat calls to many models: cache first, concurrency and rate limits, failures recorded
  call_cache   the persistent cache of those calls (SQLite)

Import submodules directly; none imports torch, transformers or openai at import time.
"""
