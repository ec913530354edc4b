"""``python -m monai.bundle run ...`` for a venv without ``fire`` (MONAI's CLI needs it; ``make setup`` does not install it).

Same entry point (``monai.bundle.scripts.run``), same ``--key value`` arguments, values parsed as
Python literals where they are ones (``3``, ``[16,16,16]``, ``true``), as fire would:

    python bench/bundle_run.py run --config_file configs/train.json --bundle_root B --epochs 3
"""

from __future__ import annotations

import ast
import sys


def _value(text: str) -> object:
    lowered = {"true": True, "false": False, "none": None}.get(text.lower(), text)
    if lowered is not text:
        return lowered
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "run":
        raise SystemExit("usage: bundle_run.py run --config_file FILE [--key value ...]")
    kwargs: dict[str, object] = {}
    rest = argv[1:]
    while rest:
        key = rest.pop(0)
        if not key.startswith("--") or not rest:
            raise SystemExit(f"expected --key value pairs, got {key!r}")
        kwargs[key[2:]] = _value(rest.pop(0))
    from monai.bundle.scripts import run

    run(**kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
