"""Federated text data sets: per-client train/test samples from Shakespeare, folders or one corpus.

Submodules: `types` (ClientData, FederatedDataset, split_train_test), `shakespeare`
(LEAF-style split by speaking role), `folders` (one client per folder or JSONL file) and
`partition` (IID, Dirichlet label-skew and by-key partitions of one corpus).
"""
