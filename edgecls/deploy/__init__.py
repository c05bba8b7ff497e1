"""`edgecls deploy`: an offline bundle for a device (artifacts, wheels for its platform and Python,
an installer that needs no network, keeps the previous release and ends with `edgecls doctor`)."""
