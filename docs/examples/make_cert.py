"""Tutorial, step 0: a certificate and key to experiment with.

Writes ``cert.pem`` and ``key.pem`` into a directory (the current one when run
as a script). The certificate is self-signed and names ``localhost``,
``127.0.0.1`` and ``::1``, so a client on the same machine can verify it by
trusting the certificate itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio_dtlsmux


def main(directory: str | Path = ".") -> tuple[Path, Path]:
    identity = trio_dtlsmux.self_signed("localhost", days=30)
    certfile, keyfile = identity.write(directory)
    print(f"wrote {certfile} and {keyfile}")
    print(f"SHA-256 fingerprint: {identity.fingerprint}")
    return certfile, keyfile


if __name__ == "__main__":
    main(*sys.argv[1:2])
