"""The pretrained weights a configuration loads: which files, where the libraries look for them,
fetching them once, and checking that they load with the network off (`python -m benchmark.weights`)."""
