"""Training loops: the resumable run, Keras `fit` for the seed model, the airbench loop with Muon."""
