"""API layer: pydantic models of the MagistralEndpoint spec and status and of the operator config.

This package imports nothing else of ours; every other layer imports it.
"""

GROUP = "magistral.dev"
VERSION = "v1alpha1"
KIND = "MagistralEndpoint"
PLURAL = "magistralendpoints"
SINGULAR = "magistralendpoint"
SHORT_NAMES = ("mep",)
API_VERSION = f"{GROUP}/{VERSION}"
