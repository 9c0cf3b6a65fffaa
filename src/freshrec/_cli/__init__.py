"""Implementations of the ``freshrec`` subcommands (private; see :mod:`freshrec.cli`)."""
