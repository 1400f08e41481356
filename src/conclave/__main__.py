"""``python -m conclave``: the same as the ``conclave`` script."""

from conclave.cli import main

main()
