"""Generate the Python modules of ``blip2/v1/blip2.proto`` into ``serve_app/grpc/generated``.

    python proto/generate.py           # rewrite the checked-in modules after changing the .proto
    python proto/generate.py --check   # exit 1 if they differ from what the .proto gives

Needs the test extra (``grpcio-tools`` and ``mypy-protobuf``, pinned so the output is stable).
The messages keep their proto file name ``blip2/v1/blip2.proto`` (what reflection shows); the
Python module name protoc derives from it (``blip2.v1``) is rewritten to the modules' place in
the package, where pickling (Serve's proxy sends requests to replicas) and imports find them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO = Path("blip2/v1/blip2.proto")
PACKAGE_DIR = PROTO_ROOT.parent / "serve_app" / "grpc" / "generated"
GENERATED = ("blip2_pb2.py", "blip2_pb2.pyi", "blip2_pb2_grpc.py", "blip2_pb2_grpc.pyi")
RENAMES = {
    "from blip2.v1 import blip2_pb2": "from serve_app.grpc.generated import blip2_pb2",
    "'blip2.v1.blip2_pb2'": "'serve_app.grpc.generated.blip2_pb2'",
}


def plugin(name: str) -> str:
    """The path of a protoc plugin installed beside this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -e '.[test]'")
    return found


def generate() -> dict[str, str]:
    """The generated modules' text, by file name."""
    with tempfile.TemporaryDirectory() as out:
        args = [
            "protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        folder = Path(out) / PROTO.parent
        return {name: renamed((folder / name).read_text(encoding="utf-8")) for name in GENERATED}


def renamed(text: str) -> str:
    """``text`` with the module name protoc derives from the proto's path made the package's."""
    for old, new in RENAMES.items():
        text = text.replace(old, new)
    return text


def stale(generated: dict[str, str]) -> list[str]:
    """The checked-in modules that differ from ``generated`` (or are missing)."""
    return [
        name
        for name, text in generated.items()
        if not (PACKAGE_DIR / name).exists()
        or (PACKAGE_DIR / name).read_text(encoding="utf-8") != text
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    generated = generate()
    if parser.parse_args().check:
        if differing := stale(generated):
            raise SystemExit(f"out of date with {PROTO}: {', '.join(differing)}")
        return
    for name, text in generated.items():
        (PACKAGE_DIR / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
