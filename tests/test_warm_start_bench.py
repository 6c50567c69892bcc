"""bench/warm_start.py's row option: ``--variant LABEL=METHOD:JSON``."""

from __future__ import annotations

import re

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
