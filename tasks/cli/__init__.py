"""The ``int8flow`` command line and its progress display."""
