"""Print the first ```bash block of a README section: ``python .ci/readme_block.py "Set-up"``.

.ci/run runs the README's set-up and test commands from here, so what CI runs is what the README
says. A section without such a block is an error naming the section. Standard library only."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def block(text: str, section: str) -> str:
    """The body of the first ```bash fence between ``## <section>`` and the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if m is None:
        raise ValueError(f"README.md has no section '## {section}'")
    fence = re.search(r"^```bash\n(.*?)^```", m.group(1), flags=re.M | re.S)
    if fence is None or not fence.group(1).strip():
        raise ValueError(f"README.md's section '## {section}' has no ```bash block")
    return fence.group(1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        print(block(README.read_text(), sys.argv[1]), end="")
    except ValueError as e:
        sys.exit(f"readme_block: {e}")
