"""Federated retrieval for RAG: a sentence encoder, its contrastive loss, local indices, rerankers and routers.

The pattern the issue names: the base LLM, the base embedding model and a generic retriever
are global; each client's vector index (and the documents in it) stays local; only the
update of the query encoder, the reranker or the intent router leaves a client, through
the same rounds, DP and SecAgg as the LM adapters (fedlm.work.retrieval, rerank, classify).
"""
