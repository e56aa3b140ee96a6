"""Faithful local stand-ins for Apple's APNs and Google's FCM HTTP v1 (with Google's OAuth2
token endpoint), over real HTTP/2 and TLS, for testing obrol's real push clients.

    async with running_standin(tmp_path) as standin:
        ...  # point aioapns / the FCM client at standin.url with standin.credentials
        assert standin.received[-1].status == 200

`python -m push.standin` (or `obrol push-standin`) runs one as a process; `/_standin/*`
controls it over HTTP (see push/standin/control.py).
"""

from push.standin.app import StandIn, running_standin
from push.standin.control import Fault, Received
from push.standin.credentials import StandInCredentials

__all__ = ["Fault", "Received", "StandIn", "StandInCredentials", "running_standin"]
