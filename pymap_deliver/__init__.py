"""pymap-deliver: an RFC 2033 LMTP delivery agent storing mail into pymap.

``lmtp`` is the protocol (it knows no gRPC), ``headers`` the trace headers,
``server`` the listeners and lifecycle; the delivery into pymap lives beside
them. Import from those modules; this package exports nothing itself.
"""
