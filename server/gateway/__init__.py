"""The gateway: the hub's WebSocket endpoint, a lean trio + wsproto listener on its own port.

listener    accepts sockets, upgrades them, runs the handshake and the read loop
connection  a device connection: states, outbound buffers, the one Flusher
session     what each client frame does
hub         who is connected where; fan-out
committer   group commit of sends
cursors     batched saving of device cursors
"""
