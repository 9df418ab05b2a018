"""One run: its plan (``run.json``), its stages as functions of the output folder, and the whole sequence."""
