"""The journal: the device's append-only event log (`store`) and the fold into per-video state (`fold`)."""
