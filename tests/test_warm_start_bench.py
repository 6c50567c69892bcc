"""bench/warm_start.py's row option (``--variant LABEL=METHOD:JSON``) and its several-epoch record (``--epochs``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from repo_scripts import load_script


def test_a_variant_is_label_method_and_json_arguments() -> None:
    ws = load_script("bench/warm_start.py", "warm_start_bench")
    assert ws.parse_variant('anp-vs/a49=anp-vs:{"a_init_fc": 49}') == ("anp-vs/a49", "anp-vs", {"a_init_fc": 49})
    assert ws.parse_variant("at2=pretrained-at") == ("at2", "pretrained-at", {})
    for bad, why in (("anp-vs", "expected LABEL=METHOD"), ("=anp-vs:{}", "expected LABEL=METHOD"),
                     ("x=:{}", "expected LABEL=METHOD"), ("x=anp-vs:[1]", "JSON-object"),
                     ("x=anp-vs:{1", "method_args is not JSON")):
        with pytest.raises(SystemExit, match=re.escape(f"--variant {bad!r}") + ".*" + re.escape(why)):
            ws.parse_variant(bad)


def test_several_epochs_record_each_epochs_pruning(tiny_mnist: Path, tmp_path: Path) -> None:
    ws = load_script("bench/warm_start.py", "warm_start_bench")
    out = tmp_path / "ws.json"
    assert ws.main(["--data-dir", str(tiny_mnist), "--limit-train", "64", "--val-size", "64", "--eval-split", "val",
                    "--runs", "anp-vs/function-preserving,pretrained-at", "--epochs", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["setup"]["epochs"] == 2
    row = rec["runs"]["anp-vs/function-preserving"]
    assert [e["epoch"] for e in row["epochs"]] == [1, 2] and all(0 <= e["unit_sparsity"] <= 100 for e in row["epochs"])
    assert "val_acc_epoch2" in row and "val_acc_epoch1" not in row
    assert "unit_sparsity" not in rec["runs"]["pretrained-at"]["epochs"][0]  # a dense method prunes nothing
    with pytest.raises(SystemExit):
        ws.main(["--epochs", "0", "--out", str(out)])
