"""The fleet: enrolment, and the console's view of every device."""
