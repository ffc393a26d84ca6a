"""Regenerate the committed gRPC stubs in ``blobtier/rpc/gen`` from ``protos/*.proto``.

    python -m blobtier.rpc.codegen          # needs grpcio-tools (the ``test`` extra)

The stubs are committed so that ``pip install blobtier`` needs no compiler; a test checks
that they match what this script generates. protoc writes ``import block_pb2`` in the
service stubs, which only works with ``gen/`` on ``sys.path``; the import is rewritten to
the package path.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = os.path.join(HERE, "protos")
GEN = os.path.join(HERE, "gen")
_BARE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.M)


def protos() -> list[str]:
    return sorted(n for n in os.listdir(PROTOS) if n.endswith(".proto"))


def generate(out_dir: str = GEN) -> list[str]:
    """Write the stubs of every proto into ``out_dir``; return the file names written."""
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *protos()]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos()}")
        written = []
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name)) as f:
                text = _BARE_IMPORT.sub(r"from blobtier.rpc.gen import \1 as \2", f.read())
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(text)
            written.append(name)
    return written


if __name__ == "__main__":
    for name in generate(sys.argv[1] if len(sys.argv) > 1 else GEN):
        print(os.path.join("blobtier/rpc/gen", name))
