"""Thin command-line entry points: each parses arguments and calls the jaxdrift library."""
