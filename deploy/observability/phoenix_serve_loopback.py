"""Run `phoenix serve` with its OTLP/gRPC listener bound to loopback only.

Phoenix binds its HTTP server (UI, REST API, OTLP/HTTP at /v1/traces) to
PHOENIX_HOST, but its OTLP/gRPC server hard-codes `[::]:<PHOENIX_GRPC_PORT>`
(phoenix/server/grpc_server.py, arize-phoenix 20.26.1), i.e. every interface.
This shim rewrites that wildcard address to PHOENIX_HOST before the port is
bound, then hands over to phoenix's own CLI entry point.

Usage (phoenix.sh does this):  <phoenix-venv>/bin/python phoenix_serve_loopback.py serve
"""

import os
import sys

import grpc.aio._server as _aio_server  # the class grpc.aio.server() returns

_HOST = os.environ.get("PHOENIX_HOST", "127.0.0.1")


def _rewrite(address: str) -> str:
    for wildcard in ("[::]:", "0.0.0.0:"):
        if address.startswith(wildcard):
            host = f"[{_HOST}]" if ":" in _HOST else _HOST
            return f"{host}:{address[len(wildcard):]}"
    return address


_orig_insecure = _aio_server.Server.add_insecure_port
_orig_secure = _aio_server.Server.add_secure_port


def _add_insecure_port(self, address):  # type: ignore[no-untyped-def]
    return _orig_insecure(self, _rewrite(address))


def _add_secure_port(self, address, server_credentials):  # type: ignore[no-untyped-def]
    return _orig_secure(self, _rewrite(address), server_credentials)


_aio_server.Server.add_insecure_port = _add_insecure_port  # type: ignore[method-assign]
_aio_server.Server.add_secure_port = _add_secure_port  # type: ignore[method-assign]

from phoenix.server.main import main  # noqa: E402  (import after the patch)

if __name__ == "__main__":
    sys.argv[0] = "phoenix"
    sys.exit(main())
