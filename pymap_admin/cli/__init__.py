"""The ``pymap-admin`` command line.

``args`` parses the command line into typed options, ``main`` runs the chosen
command; each service has its module of small command classes (``system``,
``mailbox``, ``user``, ``token``, ``config``), imported only when chosen so
that a delivery by ``pymap-admin append`` starts quickly.
"""
