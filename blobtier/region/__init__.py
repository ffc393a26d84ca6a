"""A local multi-process region: ``blobtier up`` / ``status`` / ``restart`` / ``down`` / ``top``.

- ``services.py``: what runs (one ``ServiceSpec`` per process, from the ``[services]`` config)
- ``state.py``: the state file of a running region, and how clients attach to it
- ``probe.py``: health checks (gRPC health service, the daemon's socket)
- ``supervisor.py``: start, watch, restart and stop the processes
- ``ports.py``: which process listens on a port (``down`` leaves none of the region's bound)
- ``top.py``: scrape the services' Prometheus endpoints into one terminal view
"""
