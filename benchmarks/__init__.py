"""Benchmarks of the service against what a user would otherwise run (not part of the tests).

Each scenario is one command, ``python -m benchmarks.run <scenario>``; see ``benchmarks.run``.
"""
