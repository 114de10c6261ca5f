"""The paper's evaluation (Table 1, Table 4, Fig. 3 / Fig. 4): metrics of trained models on held-out simulated
cases and on real radiographs, and the FID of synthesised views (``xraysyn evaluate``)."""
