"""Simulated multi-node Ray clusters on one machine."""

from __future__ import annotations

from ray import cloudpickle

import tests.support.fakes

# Fake models travel by value, so worker nodes need not import the tests package.
cloudpickle.register_pickle_by_value(tests.support.fakes)
