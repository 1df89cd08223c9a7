"""Graph learning pieces for the gcn_train flow (PyTorch-Direct zero-copy feature loading on DGL)."""
