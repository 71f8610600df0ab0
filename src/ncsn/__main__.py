"""`python -m ncsn` (and `torchrun -m ncsn`) entry point."""

from ncsn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
