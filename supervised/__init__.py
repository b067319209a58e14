"""trainyard.supervised: models, data and the Ray Train loop for `kind: supervised` jobs."""
