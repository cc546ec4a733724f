"""The grapevine daemon: asyncio + aiohttp shell around the gossip core."""
