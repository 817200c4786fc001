"""Test-suite wide settings.

Hypothesis runs derandomized by default, so `make test` and CI explore the same examples every
time and a gate never fails on a newly drawn example; run
`pytest --hypothesis-profile=explore` to search fresh examples (and add what it finds as
explicit cases).
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("gate", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=1000, print_blob=True)
settings.load_profile("gate")
