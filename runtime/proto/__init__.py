"""Generated gRPC/protobuf stubs for the `inference` protocol; never hand-edited.

Regenerate them with ``python proto/generate.py`` from proto/*.proto. They register
their descriptors in the private ``POOL`` below, not protobuf's default pool, so
that they can live in one process with tritonclient's own `inference.*` stubs.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
