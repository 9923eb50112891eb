"""The ``ladle`` command line."""
