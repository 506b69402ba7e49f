"""The OpenAI-compatible HTTP server (FastAPI): ``build_app`` and the ``unifer serve`` / ``unifer bench serve``
commands. Imported only by those commands, so the offline API never pays for FastAPI."""

from __future__ import annotations


def build_app(*args, **kwargs):
    from unifer.server.app import build_app as _build_app

    return _build_app(*args, **kwargs)


__all__ = ["build_app"]
