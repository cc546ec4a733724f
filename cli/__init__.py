"""The grapevine command line."""
