"""The packages that the README's set-up (``pip install -e ".[dev]"``) does not install, by the module
name a test imports: which distribution provides each, and how. A test that needs one skips, naming
the module, where it is missing (``pytest.importorskip``); .ci/skips.py reads this table to tell such
skips from a skip for a missing *required* package (a failure), and tests/test_install.py checks it
against pyproject's extras."""

from __future__ import annotations

#: module -> (distribution, how it is installed)
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "scipy": ("scipy", '.[crosscheck]'),
    "secmlt": ("secml-torch", '.[crosscheck]'),
    "onnx": ("onnx", '.[export]'),
    "onnxscript": ("onnxscript", '.[export]'),
    "onnxruntime": ("onnxruntime", '.[export]'),
    "torchattacks": ("torchattacks", "pip install --no-deps torchattacks==3.5.1"),
    "ray": ("ray", '.[ray]'),
    "mutmut": ("mutmut", '.[mutation]'),  # bench/mutation.py's own tests (tests/test_bench_records.py)
}
#: the extras that hold the optional packages above (``dev`` is part of the README's set-up)
OPTIONAL_EXTRAS = ("crosscheck", "export", "mutation", "ray")
