"""A local multi-process region: ``blobtier up`` / ``status`` / ``down`` / ``top``.

- ``services.py``: what runs (one ``ServiceSpec`` per process, from the ``[services]`` config)
- ``state.py``: the state file of a running region, and how clients attach to it
- ``probe.py``: health checks (gRPC health service, the daemon's socket)
- ``supervisor.py``: start, watch and stop the processes
- ``top.py``: scrape the services' Prometheus endpoints into one terminal view
"""
