"""History, channel settings and the knowledge index, behind the interface in `interface`."""
