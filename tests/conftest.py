"""Shared test configuration.

Hypothesis: CI (`CI=1`, set by .ci/run) runs a derandomized profile, so a red build always
reproduces; locally each run draws fresh examples and can find new cases."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
