"""The gossip protocol core: sans-I/O, no wall clock, no global random."""
