"""``python -m search.pick [overrides]``: choose one trial of a finished study and ship it as a bundle."""
from ..cli import entry

if __name__ == "__main__":
    entry("search.pick.picker:_pick_and_report")
