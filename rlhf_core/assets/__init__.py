"""Data files shipped inside the package (the demo SFT set), found next to this module so they work
from a source checkout and from an installed wheel alike."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def asset_path(name: str) -> Path:
    """The path of the bundled file ``name``; FileNotFoundError (naming the folder) if it is absent."""
    path = ASSETS_DIR / name
    if not path.is_file():
        available = sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_file() and p.suffix != ".py")
        raise FileNotFoundError(
            f"no bundled asset {name!r} in {ASSETS_DIR} (available: {', '.join(available) or 'none'}); "
            "the demo SFT set is regenerated with: python -m rlhf.core.demo_data "
            "rlhf_core/assets/sft_demo.jsonl"
        )
    return path
