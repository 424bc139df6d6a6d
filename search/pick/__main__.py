"""``python -m search.pick [overrides]``: choose one trial of a finished study and ship it as a bundle."""
from .picker import main

if __name__ == "__main__":
    main()
