"""`make lint`'s breaking-change check can fail: it compares with the recorded release contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = str(Path(sys.executable).parent / "buf")
BASELINE = ROOT / "protos" / "baseline.binpb"


def breaking(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUF, "breaking", "--against", str(BASELINE)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_contract(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def test_the_current_contract_is_compatible_with_the_released_one(tmp_path: Path) -> None:
    result = breaking(copy_of_the_contract(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_field_type_is_caught(tmp_path: Path) -> None:
    tree = copy_of_the_contract(tmp_path)
    proto = tree / "protos" / "forecast" / "v1" / "forecast.proto"
    text = proto.read_text()
    assert "  string version = 1;" in text
    proto.write_text(text.replace("  string version = 1;", "  int64 version = 1;", 1))
    result = breaking(tree)
    assert result.returncode != 0
    assert "changed type" in result.stdout + result.stderr
