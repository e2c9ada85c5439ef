"""The fleet: enrolment (X.509 PKI) and the central broker; the console lives in nodes/console/."""
