"""MAGIC grouped datasets: schema, sources, concept labelers and the builder."""
