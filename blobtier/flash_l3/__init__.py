"""The regional flash cache (L3): a log-structured chunk store on SSD and the node serving it.

``device`` (region files) -> ``regions`` (format, lifecycle) -> ``index`` -> ``admission``
-> ``cache`` (``FlashCache``, warm restart through ``snapshot``) -> ``readthrough`` (single
flight over the block layer) -> ``service`` (``FlashNode``, gRPC) and ``metrics``.
Clients reach nodes through ``blobtier.rpc.sharded_cache``. Nothing here imports the block
layer, the SDK or torch: the node is handed its ``ChunkSource`` by ``blobtier.cli``.
"""
