"""``python -m ipskit ...``: the same command line as the ``ipskit`` script (ipskit.cli)."""

from ipskit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
