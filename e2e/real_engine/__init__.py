"""The real vLLM engine on CPU for the `vllm` test group (docs/real-engine.md).

* :mod:`e2e.real_engine.env` installs (or reuses) a venv with the CPU build of vLLM and this
  project's runtime, cached outside the repository and keyed by the pinned versions;
* :mod:`e2e.real_engine.tiny_model` writes a tiny, randomly initialised model in Mistral's
  native format (run with the engine venv's python: it needs torch and safetensors);
* :mod:`e2e.real_engine.serve` starts `magistral-runtime serve` processes on loopback.
"""
