"""A vLLM engine simulator (one per simulated pod) and the supervisor that runs them.

``simulator``: an OpenAI-compatible server that behaves like one vLLM replica serving
Magistral Small (continuous batching, a FIFO waiting queue, a KV cache, vLLM's metrics).
``supervisor``: watches the pods of the local cluster and runs a simulator on each pod IP.
See docs/engine-simulator.md.
"""
