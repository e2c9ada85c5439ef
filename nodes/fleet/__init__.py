"""The fleet: enrolment (X.509 PKI), the central broker, and the `vv fleet` verb."""
