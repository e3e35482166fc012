"""Federated text data sets: per-client train/test samples from Shakespeare, folders or one corpus.

Submodules: `types` (ClientData, FederatedDataset, split_train_test), `shakespeare`
(LEAF-style split by speaking role), `folders` (one client per folder or JSONL file) and
`partition` (IID, Dirichlet label-skew and by-key partitions of one corpus), `textfiles`
(one streamed reader per file format, binary and encoding checks), `report` (what a folder
load read, skipped and refused, per client) and `blocks` (tokens packed into sequences).
"""
