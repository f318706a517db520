"""The `sparring` command line: thin parsers over the library (`sparring.cli.main`)."""

from sparring.cli.main import main, make_parser

__all__ = ["main", "make_parser"]
