"""Helpers shared by the tests and the bench scripts (not part of the installed package).

Tests import them as ``helpers`` (pytest puts tests/ on sys.path: tests/conftest.py's folder);
a bench script puts tests/ on sys.path first (see bench/bench_upload_link.py).
"""
