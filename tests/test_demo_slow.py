"""The README demo, in full (about 4 minutes on 2 CPU cores): marked slow, run with scripts/test.sh -m slow."""

import json

import pytest

from igulora.cli import main


@pytest.mark.slow
def test_demo_reaches_80_percent(tmp_path, minilm_path, shared_data, capsys):
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] >= 0.80
    assert "Final rank allocation" in capsys.readouterr().out
