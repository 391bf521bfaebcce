"""`frozenlm bench`: throughput, FLOP/s, memory, load time and checkpoint size, against a reference."""
