"""The OpenAI-compatible server, split as vLLM's entrypoints are: `protocol` (request, response, usage and error
models), `serving` (admission, batching through the backend, streaming), `router` (the HTTP routes, thin)."""
