"""The router front: `magistral-runtime front`, in front of vllm-router in every router pod.

vllm-router answers 503 at once when it has no worker and its admission limit is one global
number fixed at start. The front adds exactly what is missing (docs/router-front.md): it holds
requests while the router has no worker (scale from zero), admits at most
``ceil(workers * max_num_seqs / router_replicas)`` requests at once (the rest wait in its FIFO),
and reports that demand to the operator (``/demand``, ``/metrics``).

Modules: ``config`` (flags), ``admission`` (the gate, pure asyncio), ``workers`` (polling the
router), ``proxy`` (the request handler), ``report`` (``/demand``, ``/metrics``, ``/healthz``),
``app`` (wiring and graceful shutdown).
"""
