"""obrol's wire protocol, sans-IO: frames, codec, secure channel, error codes.

Imports nothing else from the project and no trio, asyncio or quart.
"""
