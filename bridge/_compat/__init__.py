"""The few places the bridge leans on another project's private API, each
pinned by ``tests/test_compat.py`` so that an upgrade fails a test, not
production."""
