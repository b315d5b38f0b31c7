"""hwr-train: read datasets, train, evaluate and export the character CNNs.

May import ``hwr_batch``; ``hwr_batch`` never imports this package or torch.
"""
