"""droptune worker: the training engine (data, stacked models, engine) and the trial loop."""
