"""labwarden: network-isolation and latency conformance for self-hosted labs.

Declared data (`topology`, `policy`) imports nothing of Docker; `lab` realises
a topology with Docker Compose; `probe` sends real packets from inside nodes.
"""

__version__ = "0.1.0"
