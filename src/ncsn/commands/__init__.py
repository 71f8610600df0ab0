"""The subcommands of the ``ncsn`` command line, one module each: ``add_parser(subparsers)`` registers the
subcommand's options, ``run(args)`` runs it and returns the exit status (see :mod:`ncsn.cli`)."""
