"""``python -m securemail`` is the ``securemail`` command."""

from securemail.cli import main

main()
