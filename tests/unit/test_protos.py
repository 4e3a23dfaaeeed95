"""The committed stubs are exactly what scripts/gen_protos produces from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "fedtrace" / "v1").glob("*_pb2*.py*"))
    assert generated == committed, "stub files differ from protos/: run scripts/gen_protos"
    for relative in generated:
        fresh = (tmp_path / relative).read_text()
        assert fresh == (ROOT / relative).read_text(), (
            f"{relative} is stale: run scripts/gen_protos and commit the result"
        )


def test_every_proto_is_package_fedtrace_v1() -> None:
    for proto in (ROOT / "protos" / "fedtrace" / "v1").glob("*.proto"):
        assert "package fedtrace.v1;" in proto.read_text(), proto
