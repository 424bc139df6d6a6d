"""``python -m search.hardware build|validate [overrides]``: a latency lookup table for ``hardware=lut``."""
from ..cli import entry

if __name__ == "__main__":
    entry("search.hardware.table:_run", actions=("build", "validate"), defaults=("hardware=lut",))
