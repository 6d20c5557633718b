"""One module per ``cryopose`` subcommand: the job as a Python function, and ``run(args)`` for the parsed
command line. Jobs sit above every other layer; only :mod:`cryopose.cli` imports them."""
