"""``python -m search.report [overrides]``: one self-contained report.html per study, or one comparing studies."""
from ..cli import entry

if __name__ == "__main__":
    entry("search.report.write:report")
