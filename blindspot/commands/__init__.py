"""One module per ``blindspot`` command; each has ``add_parser(subparsers)`` and ``main(args) -> int``
and is the composition root of its process (what it builds, in what order, how it stops)."""
