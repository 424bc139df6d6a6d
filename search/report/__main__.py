"""``python -m search.report [overrides]``: one self-contained report.html per study, or one comparing studies."""
from .write import main

if __name__ == "__main__":
    main()
