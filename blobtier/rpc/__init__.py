"""gRPC plumbing shared by every service: stubs, the status table, servers and channels.

Nothing outside the server and client modules of each part imports this package, so
``import blobtier`` never loads grpc.
"""
