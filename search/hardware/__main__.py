"""``python -m search.hardware build|validate [overrides]``: a latency lookup table for ``hardware=lut``."""
from .table import main

if __name__ == "__main__":
    main()
