"""``resnet50 serve``: an HTTP inference server with dynamic batching, KServe v2 and a web page.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart), and the ``grpc`` extra for
``--grpc-port`` (:mod:`.grpc`); nothing here is imported by ``import resnet50``.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from resnet50.apps.serve.app import create_app

        return create_app
    raise AttributeError(name)
