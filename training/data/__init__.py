"""Training data: the synthetic corpus, preprocessing of real video, and datasets over the LRS2 layout."""
