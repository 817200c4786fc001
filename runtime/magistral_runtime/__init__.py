"""Magistral runtime: launches `vllm serve` for Magistral Small and adds what vLLM lacks."""

__version__ = "0.1.0"

# The vLLM release the runtime image is built from and the launcher's flags are checked against.
VLLM_VERSION = "0.33.0"
