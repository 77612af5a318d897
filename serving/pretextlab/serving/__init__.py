"""Embeddings of registered encoders: the Ray Serve application and the batch embedding job.

``app.build_app`` (import path of serving/serve_config.yaml) binds ``api.EmbeddingAPI`` (FastAPI ingress:
key, limits, decoding, region reads, per-model ``batcher``) to one ``encoder.EncoderReplica`` per model;
``batch.run_embed`` writes per-item feature bags (``bags``) with Ray Data. See docs/serving.md.
"""
