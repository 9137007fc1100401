"""Training tasks: prepare a run, train a chunk, plot its loss."""
