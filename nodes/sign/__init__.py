"""The sign node's domain logic: key store, LogLine building/signing/hashing, chain-head recovery."""
