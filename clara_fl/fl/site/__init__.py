"""Code that runs at every FL site: Learner, Validator, torchrun worker, local state, weights, streaming."""
