"""The workstation's side of the loop with devices on the LAN: `pull` brings a device's labelled
photos home, `push` sends a verified model to one device or a few dozen (canary, then waves,
rolled back at the first refusal). Both speak to `edgecls serve` over HTTP with aiohttp's client."""
